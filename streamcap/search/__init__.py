"""Full-text search over captions, object labels and alerts: an SQLite FTS5 index beside the log.

``IndexWriter`` builds it while a run logs (a record-tap subscriber, its own thread);
``build_index(log)`` rebuilds it from any JSONL log; ``SearchIndex(path).search(text, camera=,
since_s=, limit=, order=)`` answers; ``open_index(index_or_log)`` finds (and builds or updates)
the index of a log. See index.py for what is indexed and query.py for the query language.
"""

from streamcap.search.index import IndexWriter, build_index, catch_up, index_path_for, rows_of
from streamcap.search.query import ORDERS, SearchIndex, open_index, parse_since, to_fts_query

__all__ = ["IndexWriter", "build_index", "catch_up", "index_path_for", "rows_of", "ORDERS", "SearchIndex",
           "open_index", "parse_since", "to_fts_query"]
