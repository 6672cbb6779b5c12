"""The live side of the dashboard: per camera the latest frame, caption, status, fps, latency.

Status, captions, fps and latency come from the records (``on_record``: ``source_status``,
``caption``, ``frame``, ``alert``). Frames come from the writer thread (``LiveHub.__call__``, a
frame subscriber of the record tap) only while someone watches, drawn at the tile's width
(``max_width``); the hub keeps a reference in a one-frame slot per watched camera. JPEG encoding happens in the viewers' threads, once per frame however many viewers
there are. A viewer that is slower than the camera simply gets the newest frame next time (the
ones in between are skipped); nothing a viewer does can block the writer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

import cv2
import numpy as np

from streamcap.capture import redact_url

# The width live frames are drawn and encoded at: a dashboard tile is 420 CSS pixels or more
# (four cameras side by side on a 1920-pixel screen: about 460).
DEFAULT_WIDTH = 480

# Status shown per camera, from source_status records.
_UP = {"connected", "reconnected", "resolution_changed"}
_DOWN = {"lost", "stalled", "connect_failed"}
_GONE = {"gave_up", "failed", "ended", "truncated"}


class CameraSlot:
    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = redact_url(name)
        self.cond = threading.Condition()
        self.encode_lock = threading.Lock()
        self.viewers = 0
        self.image: np.ndarray | None = None
        self.seq = 0  # frames put in the slot
        self.put_at = -1e9  # monotonic time of the last one
        self.jpeg: bytes | None = None
        self.jpeg_seq = -1
        self.caption: str | None = None
        self.caption_time: str | None = None
        self.status = "starting"
        self.status_time: str | None = None
        self.down_since: float | None = None  # monotonic start of the current outage
        self.frame_times: deque[float] = deque(maxlen=64)
        self.latency_ms: float | None = None
        self.frames = 0
        self.last_alert: dict | None = None


class LiveHub:
    """The pipeline's ``on_frame`` callback (``hub(result, image)``) and the record subscriber
    (``hub.on_record(record)``) for the dashboard."""

    def __init__(self, cameras: list[str], *, jpeg_quality: int = 75, max_fps: float = 5.0,
                 max_width: int = DEFAULT_WIDTH) -> None:
        """``max_fps``: at most this many frames a second per camera are drawn and kept for the
        viewers (0: every frame); the others are never drawn. ``max_width``: the writer draws
        the annotations onto the frame scaled down to this width (the size of a tile), and an
        image that still comes wider is scaled before encoding (0: full size)."""
        self.cameras = [CameraSlot(i, name) for i, name in enumerate(cameras)]
        self._by_name = {c.name: c for c in self.cameras}
        for raw, cam in zip(cameras, self.cameras):
            self._by_name.setdefault(raw, cam)
        self.jpeg_quality = jpeg_quality
        self.period = 1.0 / max_fps if max_fps > 0 else 0.0
        self.max_width = max_width
        self.encoded = 0  # JPEGs encoded (for tests and the benchmark)
        self.last_stats: dict | None = None

    def slot(self, name: str | None) -> CameraSlot | None:
        if name is None:
            return None
        return self._by_name.get(name) or self._by_name.get(redact_url(name))

    # -- from the engine (writer thread) ------------------------------------------------------
    def wants_image(self, result: Any = None) -> bool | int:
        """While anyone watches this frame's camera and a frame is due: the width to draw it at
        (``max_width``; True: full size), else False. The writer draws frames only then. Without
        a result: whether anyone watches at all."""
        if result is not None:
            cam = self.slot(result.frame.source)
            if cam is not None and cam.viewers > 0 and self._due(cam):
                return self.max_width or True
            return False
        return any(c.viewers for c in self.cameras)

    def put_jpeg(self, camera: str, jpeg: bytes) -> None:
        """An already encoded frame (from a cluster actor): viewers get these bytes as they are;
        ignored for an unknown or unwatched camera."""
        cam = self.slot(camera)
        if cam is None or not cam.viewers:
            return
        with cam.cond:
            cam.put_at = time.monotonic()
            cam.seq += 1
            cam.image = jpeg  # not None: "a frame is there"; never encoded again (jpeg_seq below)
            cam.jpeg, cam.jpeg_seq = jpeg, cam.seq
            cam.cond.notify_all()

    def _due(self, cam: CameraSlot) -> bool:
        return time.monotonic() - cam.put_at >= self.period * 0.9  # a little early rather than a frame late

    def __call__(self, result: Any, image: np.ndarray) -> None:
        cam = self.slot(result.frame.source)
        if cam is not None and cam.viewers and self._due(cam):
            with cam.cond:
                cam.put_at = time.monotonic()
                cam.image = image
                cam.seq += 1
                cam.cond.notify_all()

    def on_record(self, record: dict) -> None:
        """A logged record (the record tap): status, shown captions, alerts, stats."""
        event = record.get("event")
        if event == "stats":
            self.last_stats = record
            return
        cam = self.slot(record.get("source"))
        if cam is None:
            return
        if event == "frame":
            cam.frames += 1
            cam.frame_times.append(time.monotonic())
            if record.get("latency_ms") is not None:
                cam.latency_ms = float(record["latency_ms"])
            if cam.status == "starting":
                cam.status = "connected"
        elif event == "source_status":
            status = record.get("status")
            if status in _UP:
                cam.status, cam.down_since = "connected", None
            elif status in _DOWN:
                if cam.down_since is None:
                    cam.down_since = time.monotonic()
                cam.status = "lost" if status == "lost" else "reconnecting"
            elif status in _GONE:
                cam.status = status
            else:
                return
            cam.status_time = record.get("time")
        elif event == "caption" and record.get("shown"):
            cam.caption, cam.caption_time = record["shown"], record.get("time")
        elif event == "alert":
            cam.last_alert = record

    # -- to the viewers -------------------------------------------------------------------------
    @contextmanager
    def watching(self, cam: CameraSlot) -> Iterator[None]:
        with cam.cond:
            cam.viewers += 1
        try:
            yield
        finally:
            with cam.cond:
                cam.viewers -= 1
                if not cam.viewers:
                    cam.image, cam.jpeg = None, None  # nothing kept while nobody watches

    def next_jpeg(self, cam: CameraSlot, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest frame after sequence number ``after`` as JPEG, waiting up to ``timeout``
        seconds for one; None when none came. Encoded once per frame for all viewers."""
        with cam.cond:
            if not cam.cond.wait_for(lambda: cam.seq > after and cam.image is not None, timeout):
                return None
            seq, image = cam.seq, cam.image
        with cam.encode_lock:
            if cam.jpeg_seq != seq:
                h, w = image.shape[:2]
                if self.max_width and w > self.max_width:
                    image = cv2.resize(image, (self.max_width, round(h * self.max_width / w)),
                                       interpolation=cv2.INTER_LINEAR)
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                if not ok:
                    return None
                cam.jpeg, cam.jpeg_seq = buf.tobytes(), seq
                self.encoded += 1
            return cam.jpeg_seq, cam.jpeg

    def state(self) -> list[dict]:
        """What each tile shows, as JSON."""
        now = time.monotonic()
        out = []
        for cam in self.cameras:
            times = [t for t in cam.frame_times if now - t <= 5.0]
            fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            out.append({
                "index": cam.index, "name": cam.name, "status": cam.status, "status_time": cam.status_time,
                "outage_s": round(now - cam.down_since, 1) if cam.down_since is not None else None,
                "caption": cam.caption, "caption_time": cam.caption_time, "fps": round(fps, 1),
                "latency_ms": round(cam.latency_ms, 1) if cam.latency_ms is not None else None,
                "frames": cam.frames, "viewers": cam.viewers,
                "last_alert": cam.last_alert.get("rule") if cam.last_alert else None,
            })
        return out
