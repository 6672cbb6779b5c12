"""The command line: ``app`` (Typer) and ``main`` (the ``streamcap`` entry point).

One module per group of commands (``run``: file/live/monitor, ``segment``, ``caption``, ``train``,
``propagation``), each with ``register(app)``; options shared by several commands are defined once
in ``options`` and helpers once in ``common``.
"""

from streamcap.cli.app import app, main

__all__ = ["app", "main"]
