"""What an actor sends its driver besides log lines: live frames for the dashboard's tiles and
event snapshots for the driver's events folder, both as JPEG bytes in ``fetch`` replies.

Both are bounded and drop when the driver is behind: a live tile gets only the newest frame of
its camera (one slot per camera, encoded when the driver asks, never in the writer thread), and
snapshots wait in a queue of at most ``max_items``/``max_bytes`` (the oldest dropped, counted).
Frames are drawn only for cameras the driver says someone watches (``watch``), at most ``fps``
a second each; with no viewer the writer draws nothing extra.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from streamcap.events import EventStore


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
    of writing it on this node. Nothing is created on the node."""

    def __init__(self, root: str, max_mb: float, max_items: int = 64, max_bytes: int = 16_000_000) -> None:
        super().__init__(root, max_mb)
        self.max_items, self.max_queue_bytes = max_items, max_bytes
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self.dropped = 0

    def open(self) -> "SnapshotOutbox":
        return self

    def _store(self, name: str, data: bytes | None) -> bool:
        with self._lock:
            self._reserved.discard(name)
            if data is None:
                self.errors += 1
                return False
            self._queue.append((name, data))
            self._queued_bytes += len(data)
            self.written += 1
            while len(self._queue) > self.max_items or self._queued_bytes > self.max_queue_bytes:
                _, old = self._queue.popleft()
                self._queued_bytes -= len(old)
                self.dropped += 1
        return True

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
        return out
