"""Searching the index: user text made into an FTS5 query, filters, and ``SearchIndex.search``."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from streamcap.errors import BadInputError
from streamcap.search.index import KINDS, camera_tag, catch_up, connect, get_meta, index_path_for, kind_tag
from streamcap.sinks import iso_time

ORDERS = ("best", "newest")
# Relative weights of the columns for "best": the shown caption, the raw caption, object labels.
BM25_WEIGHTS = (1.0, 0.6, 0.8)
# "best" ranks at most this many matches, the newest (see SearchIndex._match).
RANK_WINDOW = 20000
_TOKEN = re.compile(r'"([^"]*)"(\*?)|(\S+)')
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def to_fts_query(text: str) -> str:
    """User text -> an FTS5 query, so that plain words just work.

    Words are all required (``dog sofa``); ``"a phrase"`` in double quotes; ``word*`` a
    prefix; ``OR`` between two terms takes either; ``-word`` excludes. Punctuation inside words
    is ignored (``dog's`` is the phrase ``dog s``). Anything else that FTS5 would read as syntax
    is quoted. BadInputError (exit 2) for an unbalanced quote, a dangling OR, or no word to find.
    """
    if text.count('"') % 2:
        raise BadInputError(f"unbalanced double quote in search {text!r}")
    groups: list[list[str]] = []  # AND of (OR of terms)
    excluded: list[str] = []
    join_next = False
    tokens = list(_TOKEN.finditer(text))
    for i, m in enumerate(tokens):
        phrase, star, bare = m.group(1), m.group(2), m.group(3)
        negate = False
        if bare is not None:
            if bare == "OR":
                if not groups or join_next or i == len(tokens) - 1:
                    raise BadInputError(f"OR needs a term on each side in search {text!r}")
                join_next = True
                continue
            if bare.startswith("-") and len(bare) > 1:
                negate, bare = True, bare[1:]
            star = "*" if bare.endswith("*") else ""
            words = re.findall(r"\w+", bare)
        else:
            words = re.findall(r"\w+", phrase)
        if not words:
            if join_next:
                raise BadInputError(f"OR needs a term on each side in search {text!r}")
            continue  # punctuation alone: nothing to find
        term = '"' + " ".join(words) + '"' + ("*" if star else "")
        if negate:
            if join_next:
                raise BadInputError(f"OR cannot join an excluded term in search {text!r}")
            excluded.append(term)
        elif join_next:
            groups[-1].append(term)
            join_next = False
        else:
            groups.append([term])
    if not groups:
        raise BadInputError(f"nothing to search for in {text!r}: give at least one word that is not excluded")
    query = " AND ".join(g[0] if len(g) == 1 else "(" + " OR ".join(g) + ")" for g in groups)
    if excluded:
        query = "(" + query + ")" + "".join(f" NOT {t}" for t in excluded)
    return query


def parse_since(value: str | float | int | None) -> float | None:
    """``--since``: a duration back from now, ``90s``, ``30m``, ``2h``, ``1d``, ``1w``,
    ``1h30m`` or plain seconds -> seconds; BadInputError otherwise."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
            if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw])", "", text).strip():
                raise BadInputError(f"--since takes a duration like 90s, 30m, 2h, 1d or 1h30m; got {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise BadInputError(f"--since must be more than 0 seconds; got {value!r}")
    return seconds


class SearchIndex:
    """Read access to an index: ``search(...)`` -> a list of dicts, best or newest first.

    Opening is cheap (one connection, WAL: a running ``monitor`` may be writing meanwhile).
    Thread-safe for searches (one lock around the connection).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import threading

        self.path = Path(path)
        if not self.path.is_file():
            raise BadInputError(f"index {self.path} does not exist")
        try:
            self._conn = connect(self.path)
        except sqlite3.DatabaseError as err:
            raise BadInputError(f"not a streamcap search index: {self.path} ({err})") from None
        self._lock = threading.Lock()

    @property
    def events_dir(self) -> Path | None:
        """The events folder snapshot names are relative to (when the index knows it)."""
        value = get_meta(self._conn, "events_dir")
        return Path(value) if value else None

    @property
    def log_path(self) -> Path | None:
        value = get_meta(self._conn, "log_path")
        return Path(value) if value else None

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]

    def cameras(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT camera FROM entries WHERE camera IS NOT NULL")]

    def search(self, text: str, *, camera: str | None = None, since_s: float | None = None, limit: int = 50,
               order: str = "best", kinds: tuple[str, ...] | None = None, now: float | None = None) -> list[dict]:
        """Entries matching ``text`` (see ``to_fts_query``), each ``{"time", "t", "camera",
        "frame_index", "kind", "caption", "raw", "labels", "snapshot", "score", "id"}``.

        ``caption`` is the shown caption (for ``objects`` rows the labels, for alerts the alert's
        text); ``snapshot`` is relative to the events folder or None. ``camera``: only that camera
        (its name as logged); ``since_s``: only the last so many seconds; ``order``: ``best``
        (BM25 rank, ties newest first; a search matching more than RANK_WINDOW entries ranks
        the newest RANK_WINDOW of them, to stay fast) or ``newest``; ``score`` is the BM25 score
        (higher is better; None with ``newest``); ``kinds``: some of caption, objects, alert.
        """
        if order not in ORDERS:
            raise BadInputError(f"unknown order {order!r}; choose {' or '.join(ORDERS)}")
        if kinds and any(k not in KINDS for k in kinds):
            raise BadInputError(f"unknown kind in {kinds!r}; choose from {', '.join(KINDS)}")
        if not isinstance(limit, int) or limit < 1:
            raise BadInputError(f"limit must be a whole number, 1 or more; got {limit!r}")
        match = "{shown raw labels} : (" + to_fts_query(text) + ")"
        if camera is not None:
            match += f' AND tags : "{camera_tag(camera)}"'
        if kinds:
            match += " AND tags : (" + " OR ".join(f'"{kind_tag(k)}"' for k in kinds) + ")"
        cutoff = None if since_s is None else (time.time() if now is None else now) - since_s
        with self._lock:
            try:
                rows = self._match(match, cutoff, limit, order)
            except sqlite3.OperationalError as err:
                raise BadInputError(f"cannot search for {text!r}: {err}") from None
        return rows

    def _match(self, match: str, cutoff: float | None, limit: int, order: str) -> list[dict]:
        conn = self._conn
        low = 0
        if cutoff is not None:
            # Rows go in in log order, so ids follow time: the first id at or after the cutoff
            # is a rowid bound FTS5 uses directly (times are checked again below).
            first = conn.execute("SELECT min(id) FROM entries WHERE t >= ?", (cutoff,)).fetchone()[0]
            if first is None:
                return []
            low = first
        if order == "newest":
            hits = conn.execute("SELECT rowid, NULL FROM fts WHERE fts MATCH ? AND rowid >= ? "
                                "ORDER BY rowid DESC LIMIT ?", (match, low, limit)).fetchall()
        else:
            # Ranking reads every match: with more than RANK_WINDOW matches, the newest
            # RANK_WINDOW of them are ranked (found in rowid order, which FTS5 streams).
            edge = conn.execute("SELECT rowid FROM fts WHERE fts MATCH ? AND rowid >= ? ORDER BY rowid DESC "
                                "LIMIT 1 OFFSET ?", (match, low, RANK_WINDOW - 1)).fetchone()
            if edge is not None:
                low = max(low, edge[0])
            score = "bm25(fts, {}, {}, {}, 0.0)".format(*BM25_WEIGHTS)
            hits = conn.execute(f"SELECT rowid, {score} AS s FROM fts WHERE fts MATCH ? AND rowid >= ? "
                                "ORDER BY s, rowid DESC LIMIT ?", (match, low, limit)).fetchall()
        if not hits:
            return []
        ids = [h[0] for h in hits]
        found = {r[0]: r for r in conn.execute(
            "SELECT id, t, camera, frame_index, kind, shown, raw, labels, snapshot FROM entries "
            f"WHERE id IN ({','.join('?' * len(ids))})", ids)}
        out = []
        for rowid, score in hits:
            r = found.get(rowid)
            if r is None or (cutoff is not None and r[1] < cutoff):
                continue
            out.append({"id": r[0], "time": iso_time(r[1]), "t": r[1], "camera": r[2], "frame_index": r[3],
                        "kind": r[4], "caption": r[5] if r[5] is not None else r[7], "raw": r[6], "labels": r[7],
                        "snapshot": r[8], "score": None if score is None else round(-score, 4)})
        return out

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_index(index_or_log: str | os.PathLike, *, on_progress: Callable[[int], None] | None = None,
               on_build: Callable[[Path, int], Any] | None = None) -> SearchIndex:
    """A ``SearchIndex`` for an index file, or for a JSONL log: its index beside it, built or
    brought up to date first (``on_build(log, size)`` is called before reading the log)."""
    p = Path(index_or_log)
    if not p.exists():
        raise BadInputError(f"{p} does not exist")
    if p.is_dir():
        raise BadInputError(f"{p} is a folder; give a log (.jsonl) or its index (.index.sqlite)")
    if _is_sqlite(p):
        return SearchIndex(p)
    index = index_path_for(p)
    size = p.stat().st_size
    if on_build is not None:
        on_build(p, size)
    catch_up(index, p, on_progress=on_progress)
    return SearchIndex(index)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror or err}") from None
