"""The web dashboard and upload demo: a reader of the engine, never a part of it.

The engine does not import this package. ``LiveHub`` receives annotated frames through the
pipeline's ``on_frame`` callback and records through the record tap; the HTTP server
(``server.py``, the standard library's ThreadingHTTPServer) serves them with the history from
the log, the events dir and the search index.
"""
