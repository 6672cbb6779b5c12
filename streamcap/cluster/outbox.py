"""What an actor sends its driver besides log lines: live frames for the dashboard's tiles and
event snapshots for the driver's events folder, both as JPEG bytes in ``fetch`` replies.

Both are bounded and drop when the driver is behind: a live tile gets only the newest frame of
its camera (one slot per camera, encoded when the driver asks, never in the writer thread), and
snapshots wait in a queue of at most ``max_items``/``max_bytes`` (the oldest dropped, counted).

Frames are drawn only for cameras the driver says someone watches (``watch``), at most ``fps``
a second each; with no viewer the writer draws nothing extra.

Snapshots are also kept in a spool folder on the node (beside the actor's local log) until the
driver acknowledges them in its next call: a snapshot whose answer was lost is sent again, and
an actor restarted on the same node sends what its predecessor had not got acknowledged. Only
a snapshot on a node that is lost with its disk is lost (its record still names it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from streamcap.events import EventStore

log = logging.getLogger(__name__)


class LiveFrames:
    """A frame subscriber of the actor's record tap (see ``streamcap.tap``)."""

    def __init__(self, quality: int = 75, max_width: int = 960) -> None:
        self.quality = quality
        self.max_width = max_width
        self._lock = threading.Lock()
        self._watched: dict[str, float] = {}  # camera -> period (s)
        self._put_at: dict[str, float] = {}
        self._latest: dict[str, Any] = {}  # camera -> image not yet sent
        self.on_put = None  # called after a frame is kept (wakes a waiting fetch)

    def watch(self, cameras: list[str], fps: float) -> None:
        period = 1.0 / fps if fps > 0 else 0.0
        with self._lock:
            self._watched = {c: period for c in cameras}
            for c in list(self._latest):
                if c not in self._watched:
                    del self._latest[c]

    def wants_image(self, result: Any) -> bool:
        cam = result.frame.source
        period = self._watched.get(cam)
        return period is not None and time.monotonic() - self._put_at.get(cam, -1e9) >= period * 0.9

    def __call__(self, result: Any, image: Any) -> None:
        if not self.wants_image(result):
            return
        cam = result.frame.source
        with self._lock:
            self._put_at[cam] = time.monotonic()
            self._latest[cam] = image  # the writer never changes a frame it handed out
        if self.on_put is not None:
            self.on_put()

    @property
    def pending(self) -> bool:
        return bool(self._latest)

    def take(self) -> dict[str, bytes]:
        """The newest frame of each watched camera since the last call, as JPEG."""
        import cv2

        with self._lock:
            latest, self._latest = self._latest, {}
        out = {}
        for cam, image in latest.items():
            h, w = image.shape[:2]
            if self.max_width and w > self.max_width:
                image = cv2.resize(image, (self.max_width, round(h * self.max_width / w)), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if ok:
                out[cam] = buf.tobytes()
        return out


class SnapshotOutbox(EventStore):
    """The actor's event store: names and draws snapshots exactly as ``EventStore`` does (the
    names are those of the driver's events folder), but queues each JPEG for the driver instead
    of writing it there. With ``spool`` each also waits in that node folder until acknowledged
    (``ack``); without, a snapshot is done once sent."""

    SPOOL_SUFFIX = ".snap"

    def __init__(self, root: str, max_mb: float, max_items: int = 64, max_bytes: int = 16_000_000,
                 spool: str | Path | None = None) -> None:
        super().__init__(root, max_mb)
        self.max_items, self.max_queue_bytes = max_items, max_bytes
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._in_flight: list[tuple[str, bytes]] = []  # sent in the last answer, not yet acknowledged
        self.dropped = 0
        self.resent = 0
        self.spool = Path(spool) if spool is not None else None
        if self.spool is not None:
            self._load_spool()

    def open(self) -> "SnapshotOutbox":
        return self

    # -- the spool -----------------------------------------------------------------------------
    def _spool_path(self, name: str) -> Path:
        return self.spool / (quote(name, safe="") + self.SPOOL_SUFFIX)

    def _load_spool(self) -> None:
        """Queue what an earlier incarnation on this node left unacknowledged, oldest first."""
        self.spool.mkdir(parents=True, exist_ok=True)
        found = []
        for p in self.spool.glob(f"*{self.SPOOL_SUFFIX}"):
            try:
                found.append((p.stat().st_mtime, p.name, p.read_bytes()))
            except OSError:
                continue
        for _, fname, data in sorted(found):
            self._queue.append((unquote(fname[:-len(self.SPOOL_SUFFIX)]), data))
            self._queued_bytes += len(data)
        self.resent += len(found)
        self._bound()

    def _unspool(self, name: str) -> None:
        if self.spool is not None:
            try:
                self._spool_path(name).unlink()
            except FileNotFoundError:
                pass

    def _spool_write(self, name: str, data: bytes) -> None:
        if self.spool is None:
            return
        path = self._spool_path(name)
        tmp = path.with_suffix(".part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as err:  # still sent from memory; only a restart would lose it
            log.warning("cannot spool snapshot %s: %s", name, err)

    # -- queue -----------------------------------------------------------------------------------
    def _bound(self) -> None:
        while len(self._queue) > self.max_items or self._queued_bytes > self.max_queue_bytes:
            old_name, old = self._queue.popleft()
            self._queued_bytes -= len(old)
            self.dropped += 1
            self._unspool(old_name)

    def _store(self, name: str, data: bytes | None) -> bool:
        with self._lock:
            self._reserved.discard(name)
            if data is None:
                self.errors += 1
                return False
            self._spool_write(name, data)
            self._queue.append((name, data))
            self._queued_bytes += len(data)
            self.written += 1
            self._bound()
        return True

    def ack(self, names: list[str] | None) -> None:
        """The driver has these (None: everything sent so far). Whatever the last answer carried
        and the driver did not acknowledge was lost with that answer: it goes out again first."""
        with self._lock:
            if not names and not self._in_flight:
                return  # nothing sent since the last call, nothing acknowledged
            if names is None:
                got = {n for n, _ in self._in_flight}
            else:
                got = set(names)
            again = [(n, d) for n, d in self._in_flight if n not in got]
            self._in_flight = []
            kept = deque()
            for n, d in self._queue:  # acknowledged already (sent by an earlier incarnation)
                if n in got:
                    self._queued_bytes -= len(d)
                else:
                    kept.append((n, d))
            self._queue = kept
            for n, d in reversed(again):
                self._queue.appendleft((n, d))
                self._queued_bytes += len(d)
            self.resent += len(again)
            for n in got:
                self._unspool(n)
            self._bound()

    def take(self, max_bytes: int = 8_000_000) -> list[tuple[str, bytes]]:
        """Queued snapshots, oldest first, up to ``max_bytes`` (at least one)."""
        out: list[tuple[str, bytes]] = []
        size = 0
        with self._lock:
            while self._queue and (not out or size + len(self._queue[0][1]) <= max_bytes):
                name, data = self._queue.popleft()
                self._queued_bytes -= len(data)
                size += len(data)
                out.append((name, data))
            self._in_flight = list(out)
        return out
