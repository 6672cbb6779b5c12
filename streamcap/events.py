"""Event snapshots: a JPEG of the annotated frame at every shown-caption change and every alert,
in a folder whose total size is bounded (oldest removed first).

Names are relative to the events folder, ``CAMERA/YYYYMMDDTHHMMSSmmmZ-fFRAME-KIND.jpg`` (``CAMERA``
is the camera's name made safe for a file name, with a short hash so that two cameras never
share a folder), and the log record of the event points to its file with a ``snapshot`` field.

With the record tap (``streamcap.tap``): ``enrich`` runs on every record before it is logged: a
caption record whose shown text changed gets the name its snapshot *will* have (the frame that
first shows the caption is drawn later, by the writer), an alert record without a snapshot gets
one the same way, and stats and end records get ``events`` (the folder's use). ``on_frame`` then
writes each pending snapshot from the first annotated frame of that camera that shows it.
Code that has the image already (alerts evaluated on a frame) calls ``snapshot(...)``, which
writes at once and returns the name to put in its record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from streamcap.errors import BadInputError
from streamcap.sinks import ensure_writable_dir

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 500.0
JPEG_QUALITY = 85
SNAPSHOT_SUFFIX = ".jpg"


def camera_folder(camera: str | None) -> str:
    """A file-system-safe folder name for a camera: its name's letters and digits, and a hash."""
    name = camera or "run"
    slug = re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_-")[:48] or "camera"
    return f"{slug}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}"


def _stamp(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y%m%dT%H%M%S") + f"{dt.microsecond // 1000:03d}Z"


def _parse_time(value: Any) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return time.time()


class EventStore:
    """The events folder: snapshots written, named, counted and pruned to ``max_bytes``.

    Thread-safe: ``enrich`` runs in whichever engine thread logs, ``on_frame`` in the writer,
    ``snapshot`` in the caller's thread.
    """

    def __init__(self, root: str | os.PathLike, max_mb: float = DEFAULT_MAX_MB, *, quality: int = JPEG_QUALITY) -> None:
        if not max_mb > 0:
            raise BadInputError(f"--events-max-mb must be more than 0, got {max_mb}")
        self.root = Path(root)
        self.max_bytes = int(max_mb * 1_000_000)  # MB: 10^6 bytes, as reported
        self.quality = int(quality)
        self._lock = threading.Lock()
        self._files: deque[tuple[str, int]] = deque()  # (name, bytes), oldest first
        self._reserved: set[str] = set()
        self._pending: dict[str, list[tuple[int, str, str]]] = {}  # camera -> [(frame_index, kind, name)]
        self.bytes = 0
        self.written = 0
        self.removed = 0
        self.removed_bytes = 0
        self.errors = 0
        self.missed = 0

    # -- opening -----------------------------------------------------------------------------------
    def open(self) -> "EventStore":
        """Create the folder (BadInputError when it cannot be), take stock of the snapshots an
        earlier run left, and prune them to the bound."""
        check_events_dir(self.root)
        found = []
        for p in self.root.rglob(f"*{SNAPSHOT_SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file() and not p.is_symlink():
                found.append((st.st_mtime, p.relative_to(self.root).as_posix(), st.st_size))
        for _, name, size in sorted(found):
            self._files.append((name, size))
            self.bytes += size
        with self._lock:
            self._prune()
        return self

    # -- names -------------------------------------------------------------------------------------
    def _reserve(self, camera: str | None, frame_index: int | None, kind: str, ts: float) -> str:
        base = f"{camera_folder(camera)}/{_stamp(ts)}-f{int(frame_index or 0):07d}-{kind}"
        name, n = base + SNAPSHOT_SUFFIX, 1
        while name in self._reserved or (self.root / name).exists():
            n += 1
            name = f"{base}-{n}{SNAPSHOT_SUFFIX}"
        self._reserved.add(name)
        return name

    def path(self, name: str) -> Path:
        """The file a ``snapshot`` name stands for; ValueError for a name outside the folder."""
        root = self.root.resolve()
        p = (root / name).resolve()
        if p == root or root not in p.parents or p.suffix != SNAPSHOT_SUFFIX:
            raise ValueError(f"not a snapshot name: {name!r}")
        return p

    # -- the record tap ----------------------------------------------------------------------------
    def enrich(self, record: dict) -> None:
        """Add ``snapshot`` to changed-caption and alert records, ``events`` to stats and end."""
        event = record.get("event")
        if event in ("stats", "end"):
            record["events"] = self.usage()
            return
        if event == "caption" and record.get("changed"):
            kind = "caption"
        elif event == "alert" and "snapshot" not in record and record.get("source") is not None:
            kind = "alert"
        else:
            return
        frame_index = record.get("frame_index")
        if frame_index is None:
            return
        with self._lock:
            name = self._reserve(record.get("source"), frame_index, kind, _parse_time(record.get("time")))
            self._pending.setdefault(record.get("source"), []).append((int(frame_index), kind, name))
        record["snapshot"] = name

    def wants_image(self, result: Any) -> bool:
        return bool(self._pending.get(result.frame.source))

    def on_frame(self, result: Any, image: np.ndarray) -> None:
        """Write the pending snapshots this annotated frame shows."""
        source = result.frame.source
        if not self._pending.get(source):
            return
        index = result.frame.index
        caption_index = result.caption.frame_index if getattr(result, "caption", None) is not None else -1
        with self._lock:
            pending = self._pending.get(source, [])
            due = [p for p in pending if (caption_index if p[1] == "caption" else index) >= p[0]]
            if not due:
                return
            self._pending[source] = [p for p in pending if p not in due]
        data = self._encode(image)
        for _, _, name in due:
            self._store(name, data)

    # -- direct snapshots --------------------------------------------------------------------------
    def snapshot(self, camera: str | None, frame_index: int | None, image: np.ndarray, *, kind: str = "alert",
                 ts: float | None = None) -> str | None:
        """Write a JPEG of ``image`` now; returns its name for the record's ``snapshot`` field
        (None when it could not be written: counted in ``errors``, logged)."""
        if not re.fullmatch(r"[a-z0-9_]+", kind):
            raise ValueError(f"snapshot kind must be lower-case letters, digits or _: {kind!r}")
        with self._lock:
            name = self._reserve(camera, frame_index, kind, time.time() if ts is None else ts)
        return name if self._store(name, self._encode(image)) else None

    # -- writing -----------------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> bytes | None:
        import cv2

        ok, buf = cv2.imencode(SNAPSHOT_SUFFIX, image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return buf.tobytes() if ok else None

    def store(self, name: str, data: bytes | None) -> bool:
        """Write already encoded JPEG bytes under ``name`` (a name this store reserved, or one a
        cluster actor reserved in its own store); False when it could not be written."""
        return self._store(name, data)

    def _store(self, name: str, data: bytes | None) -> bool:
        path = self.root / name
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            if data is None:
                raise OSError("JPEG encoding failed")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)  # a reader never sees half a file
        except OSError as err:
            with self._lock:
                self.errors += 1
                self._reserved.discard(name)
                first = self.errors == 1
            try:
                tmp.unlink()
            except OSError:
                pass
            (log.warning if first else log.debug)("cannot write snapshot %s: %s", path, err)
            return False
        with self._lock:
            self._reserved.discard(name)
            self._files.append((name, len(data)))
            self.bytes += len(data)
            self.written += 1
            self._prune()
        return True

    def _prune(self) -> None:
        """Remove the oldest snapshots until the folder is within the bound (lock held)."""
        while self.bytes > self.max_bytes and self._files:
            name, size = self._files.popleft()
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                log.debug("cannot remove snapshot %s: %s", name, err)
            self.bytes -= size
            self.removed += 1
            self.removed_bytes += size

    # -- reporting ---------------------------------------------------------------------------------
    def usage(self) -> dict[str, Any]:
        """The folder's use: ``files``, ``bytes``, ``max_bytes``, snapshots ``written`` and
        ``removed`` (with ``removed_bytes``) in this run, write ``errors``, ``pending``."""
        with self._lock:
            return {"dir": str(self.root), "files": len(self._files), "bytes": self.bytes,
                    "max_bytes": self.max_bytes, "written": self.written, "removed": self.removed,
                    "removed_bytes": self.removed_bytes, "errors": self.errors,
                    "pending": sum(len(v) for v in self._pending.values())}

    def close(self) -> dict[str, Any]:
        """Forget snapshots no frame showed (the run ended first; counted as ``missed``)."""
        with self._lock:
            self.missed += sum(len(v) for v in self._pending.values())
            for items in self._pending.values():
                for _, _, name in items:
                    self._reserved.discard(name)
            self._pending.clear()
        return self.usage()


def check_events_dir(path: str | os.PathLike) -> Path:
    """The events folder exists or can be created, and is writable; BadInputError otherwise."""
    p = Path(path)
    if p.is_symlink() and not p.is_dir():
        raise BadInputError(f"--events-dir is a broken symbolic link: {p}")
    if p.exists() and not p.is_dir():
        raise BadInputError(f"--events-dir is a file, not a folder: {p}")
    return ensure_writable_dir(p, "--events-dir")
