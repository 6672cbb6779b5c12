"""Glue between the CLI and the web package: search over the index beside a log."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def open_search(log: Path | None, events_dir: Path | None) -> Callable | None:
    """A search function ``(text, camera, since_s, limit, order) -> rows`` over the index
    beside ``log``, or None without a log."""
    return None
