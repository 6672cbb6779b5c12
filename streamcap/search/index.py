"""The search index: an SQLite FTS5 table over every caption (shown and raw), every change of the
detected object labels, and every alert, kept beside the JSONL log.

One row per searchable moment in ``entries`` (time, camera, frame index, kind, texts, snapshot),
with the same rowid in the contentless FTS5 table ``fts`` (porter stemming, so "dogs" finds
"dog"; its ``tags`` column holds one token for the camera and one for the kind, so that those
filters are part of the full-text match). Rows come from log records by ``rows_from_record``, the same way whether the index
is built while running (``IndexWriter``, a record-tap subscriber with its own thread) or
rebuilt from a log (``build_index``). ``meta`` remembers how many bytes of the log are indexed,
so a search on a log that grew only reads the new part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from streamcap.errors import BadInputError

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
KINDS = ("caption", "objects", "alert")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS entries(
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    camera TEXT,
    frame_index INTEGER,
    kind TEXT NOT NULL,
    shown TEXT,
    raw TEXT,
    labels TEXT,
    snapshot TEXT
);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    shown, raw, labels, tags, content='',
    tokenize='porter unicode61 remove_diacritics 2'
);
"""
SECONDARY_INDEXES = """
CREATE INDEX IF NOT EXISTS entries_t ON entries(t);
"""
INSERT_ENTRY = ("INSERT INTO entries(id, t, camera, frame_index, kind, shown, raw, labels, snapshot) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_FTS = "INSERT INTO fts(rowid, shown, raw, labels, tags) VALUES (?, ?, ?, ?, ?)"


def camera_tag(camera: str | None) -> str:
    """The one token that stands for a camera in the ``tags`` column."""
    return "c" + hashlib.sha1((camera or "").encode("utf-8")).hexdigest()[:16]


def kind_tag(kind: str) -> str:
    return "k" + kind


def index_path_for(log_path: str | os.PathLike) -> Path:
    """Where a log's index lives: ``NAME.jsonl`` -> ``NAME.index.sqlite`` beside it (any other
    name gets ``.index.sqlite`` appended)."""
    p = Path(log_path)
    if p.suffix.lower() == ".jsonl":
        return p.with_suffix(".index.sqlite")
    return p.with_name(p.name + ".index.sqlite")


def record_time(record: dict) -> float | None:
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


class RowMaker:
    """Log records -> index rows ``(t, camera, frame_index, kind, shown, raw, labels, snapshot)``.

    Captions: every caption record, shown and raw (raw only when it differs). Objects: a row
    each time the set of labels a camera's frames show changes to a new non-empty set. Alerts:
    every alert record (its message/caption, rule and label). Other records give nothing.
    """

    def __init__(self) -> None:
        self._labels: dict[Any, tuple[str, ...]] = {}

    def rows(self, record: dict) -> list[tuple]:
        event = record.get("event")
        if event not in ("caption", "frame", "alert"):
            return []
        t = record_time(record)
        if t is None:
            raise ValueError("record has no valid time")
        camera = record.get("source")
        frame_index = record.get("frame_index")
        if not isinstance(frame_index, int):
            frame_index = None
        snapshot = record.get("snapshot") if isinstance(record.get("snapshot"), str) else None
        if event == "caption":
            shown, raw = _text(record.get("shown")), _text(record.get("raw"))
            if not shown and not raw:
                return []
            return [(t, camera, frame_index, "caption", shown or raw, raw if raw != shown else None, None, snapshot)]
        if event == "frame":
            det = record.get("detections")
            labels = _labels_of(det) if isinstance(det, dict) else ()
            previous = self._labels.get(camera)
            self._labels[camera] = labels
            if not labels or labels == previous:
                return []
            return [(t, camera, frame_index, "objects", None, None, " ".join(labels), snapshot)]
        text = _text(record.get("message")) or _text(record.get("caption")) or _text(record.get("shown"))
        label = record.get("label") if isinstance(record.get("label"), str) else None
        if label is None and isinstance(record.get("labels"), list):
            label = " ".join(x for x in record["labels"] if isinstance(x, str)) or None
        rule = _text(record.get("rule"))
        return [(t, camera, frame_index, "alert", text or rule, rule if text else None, label, snapshot)]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _labels_of(det: dict) -> tuple[str, ...]:
    counts = det.get("counts")
    if isinstance(counts, dict):
        return tuple(sorted(str(k) for k, v in counts.items() if v))
    objects = det.get("objects")
    if isinstance(objects, list):
        return tuple(sorted({str(o.get("label")) for o in objects if isinstance(o, dict) and o.get("label")}))
    return ()


# -- the database ------------------------------------------------------------------------------------
def connect(path: str | os.PathLike, *, bulk: bool = False) -> sqlite3.Connection:
    """Open (creating) an index. WAL, so searches read while a run writes; ``bulk``: no journal
    and no syncs (a rebuild into a temporary file, renamed into place when complete)."""
    conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False, isolation_level=None)
    try:
        if bulk:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
        else:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(SCHEMA)
        if not bulk:
            conn.executescript(SECONDARY_INDEXES)
        fmt = get_meta(conn, "format")
        if fmt is None:
            set_meta(conn, "format", INDEX_FORMAT)
        elif int(fmt) != INDEX_FORMAT:
            raise sqlite3.DatabaseError(f"index format {fmt}, this streamcap reads {INDEX_FORMAT}")
    except sqlite3.OperationalError as err:
        conn.close()
        if "fts5" in str(err).lower():
            raise BadInputError("this Python's SQLite has no FTS5; search needs an SQLite built with FTS5") from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, None if value is None else str(value)))


def insert_rows(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """Insert rows (in the caller's transaction), ids continuing from the largest."""
    if not rows:
        return
    start = (conn.execute("SELECT max(id) FROM entries").fetchone()[0] or 0) + 1
    ids = range(start, start + len(rows))
    conn.executemany(INSERT_ENTRY, [(i, *r) for i, r in zip(ids, rows)])
    conn.executemany(INSERT_FTS, [(i, r[4], r[5], r[6], f"{camera_tag(r[1])} {kind_tag(r[3])}")
                                  for i, r in zip(ids, rows)])


# -- reading logs -------------------------------------------------------------------------------------
def iter_log(path: Path, start: int = 0, end: int | None = None, *,
             on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[dict | None, int]]:
    """``(record, end_offset)`` for each complete line from byte ``start`` to ``end``; a line
    that is not a JSON object gives ``(None, offset)`` (the caller counts it)."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset, last_report = start, start
        for line in fh:
            if not line.endswith(b"\n"):
                break  # a line still being written, or cut off: not indexed yet
            offset += len(line)
            if end is not None and offset > end:
                break
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict):
                record = None
            yield record, offset
            if on_progress is not None and offset - last_report >= 1 << 20:
                on_progress(offset)
                last_report = offset
        if on_progress is not None:
            on_progress(offset)


def index_log(conn: sqlite3.Connection, log_path: Path, start: int = 0, end: int | None = None, *,
              on_progress: Callable[[int], None] | None = None, batch: int = 20000) -> dict[str, int]:
    """Index a log from byte ``start``; returns ``{"records", "rows", "skipped", "offset"}``
    (``skipped``: lines that are not JSON objects, or rows that cannot be made)."""
    maker = RowMaker()
    stats = {"records": 0, "rows": 0, "skipped": 0, "offset": start}
    rows: list[tuple] = []

    def flush() -> None:
        conn.execute("BEGIN")
        insert_rows(conn, rows)
        set_meta(conn, "log_offset", stats["offset"])
        conn.execute("COMMIT")
        stats["rows"] += len(rows)
        rows.clear()

    for record, offset in iter_log(log_path, start, end, on_progress=on_progress):
        stats["offset"] = offset
        if record is None:
            stats["skipped"] += 1
            continue
        stats["records"] += 1
        try:
            rows.extend(maker.rows(record))
        except (ValueError, TypeError, AttributeError):
            stats["skipped"] += 1
        if len(rows) >= batch:
            flush()
    flush()
    return stats


def build_index(log_path: str | os.PathLike, index_path: str | os.PathLike | None = None, *,
                on_progress: Callable[[int], None] | None = None, events_dir: str | None = None) -> dict[str, Any]:
    """Rebuild the index of a log from scratch (into a temporary file renamed into place, so a
    search never sees half an index); returns the counts and the index path."""
    log_path = Path(log_path)
    if not log_path.is_file():
        raise BadInputError(f"log {log_path} does not exist" if not log_path.exists() else f"not a file: {log_path}")
    index_path = Path(index_path) if index_path is not None else index_path_for(log_path)
    tmp = index_path.with_name(f".{index_path.name}.building")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    try:
        conn = connect(tmp, bulk=True)
    except sqlite3.Error as err:
        raise BadInputError(f"cannot write index {index_path}: {err}") from None
    t0 = time.perf_counter()
    try:
        set_meta(conn, "log_path", str(log_path.resolve()))
        if events_dir is not None:
            set_meta(conn, "events_dir", str(Path(events_dir).resolve()))
        stats = index_log(conn, log_path, 0, on_progress=on_progress)
        conn.executescript(SECONDARY_INDEXES)
        conn.execute("INSERT INTO fts(fts) VALUES ('optimize')")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{index_path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, index_path)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["index"] = str(index_path)
    return stats


def catch_up(index_path: Path, log_path: Path, *, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Bring an index up to date with its log: index what was appended since; rebuild when the
    index is missing, unreadable, or the log is shorter than what it says it indexed."""
    size = log_path.stat().st_size
    try:
        conn = connect(index_path)
    except sqlite3.DatabaseError:
        return build_index(log_path, index_path, on_progress=on_progress)
    try:
        offset = int(get_meta(conn, "log_offset") or 0)
        if offset > size:
            conn.close()
            return build_index(log_path, index_path, on_progress=on_progress)
        if get_meta(conn, "log_path") is None:
            set_meta(conn, "log_path", str(log_path.resolve()))
        stats = index_log(conn, log_path, offset, on_progress=on_progress) if offset < size else \
            {"records": 0, "rows": 0, "skipped": 0, "offset": offset}
    finally:
        conn.close()
    stats["index"] = str(index_path)
    return stats


# -- built while running -------------------------------------------------------------------------------
class IndexWriter:
    """A record-tap subscriber that keeps the index up to date while a run logs.

    Calling it only queues the record (``put_nowait``: a full queue drops the record and counts
    it in ``dropped``, never blocking the engine); its own thread turns records into rows and
    commits them in batches (every ``commit_s`` seconds or ``batch`` rows). On start it first
    indexes what the log held before this run (``log_path``), so an appended log is searched
    whole. ``close()`` commits the rest and records how much of the log is indexed.
    """

    def __init__(self, index_path: str | os.PathLike, *, log_path: str | os.PathLike | None = None,
                 events_dir: str | os.PathLike | None = None, queue_size: int = 100_000,
                 commit_s: float = 0.5, batch: int = 5000) -> None:
        self.path = Path(index_path)
        self.log_path = Path(log_path) if log_path is not None else None
        self.events_dir = Path(events_dir) if events_dir is not None else None
        self.commit_s = commit_s
        self.batch = batch
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._start_size = self.log_path.stat().st_size if self.log_path is not None and self.log_path.exists() else 0
        self._thread: threading.Thread | None = None
        self._maker = RowMaker()
        self.records = 0
        self.rows = 0
        self.dropped = 0
        self.skipped = 0
        self.error: str | None = None
        self.committed = threading.Event()  # set after each commit (tests wait on it)

    def start(self) -> "IndexWriter":
        self._thread = threading.Thread(target=self._run, name="search-index", daemon=True)
        self._thread.start()
        return self

    def __call__(self, record: dict) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _open(self) -> sqlite3.Connection:
        try:
            conn = connect(self.path)
        except sqlite3.DatabaseError as err:  # not an index (or another format): start afresh
            log.warning("search index %s unreadable (%s); rebuilding it", self.path, err)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            conn = connect(self.path)
        if self.events_dir is not None:
            set_meta(conn, "events_dir", str(self.events_dir.resolve()))
        if self.log_path is not None:
            set_meta(conn, "log_path", str(self.log_path.resolve()))
            offset = int(get_meta(conn, "log_offset") or 0)
            if offset > self._start_size:  # the log was replaced: index it again
                conn.execute("DELETE FROM entries")
                conn.execute("INSERT INTO fts(fts) VALUES ('delete-all')")
                offset = 0
            if offset < self._start_size:
                index_log(conn, self.log_path, offset, self._start_size)
        return conn

    def _run(self) -> None:
        try:
            conn = self._open()
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            log.warning("search index %s cannot be written (%s); searching this run needs "
                        "`streamcap index` afterwards", self.path, self.error)
            self._drain_forever()
            return
        try:
            done = False
            while not done:
                pending: list[tuple] = []
                deadline = None
                while len(pending) < self.batch:
                    timeout = 0.25 if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        record = self._queue.get(timeout=timeout)
                    except queue.Empty:
                        if deadline is not None:
                            break
                        continue
                    if record is None:
                        done = True
                        break
                    if deadline is None:
                        deadline = time.monotonic() + self.commit_s
                    self.records += 1
                    try:
                        pending.extend(self._maker.rows(record))
                    except (ValueError, TypeError, AttributeError):
                        self.skipped += 1
                self._commit(conn, pending, final=done)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            log.warning("search index %s: writing stopped (%s); rebuild with `streamcap index`", self.path, self.error)
            self._drain_forever()
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, rows: list[tuple], final: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        insert_rows(conn, rows)
        if final and self.log_path is not None and self.log_path.exists():
            set_meta(conn, "log_offset", self.log_path.stat().st_size)
        conn.execute("COMMIT")
        self.rows += len(rows)
        self.committed.set()

    def _drain_forever(self) -> None:
        while self._queue.get() is not None:
            pass

    def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """Commit what is queued and stop the thread; returns ``usage()``."""
        if self._thread is not None:
            while True:
                try:
                    self._queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        break
            self._thread.join(timeout)
            self._thread = None
        return self.usage()

    def usage(self) -> dict[str, Any]:
        return {"index": str(self.path), "records": self.records, "rows": self.rows, "dropped": self.dropped,
                "skipped": self.skipped, "error": self.error}


def rows_of(records: Iterable[dict]) -> list[tuple]:
    """Index rows for a sequence of records (tests, benchmarks)."""
    maker = RowMaker()
    return [row for r in records for row in maker.rows(r)]
