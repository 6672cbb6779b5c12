"""Sources and their reader threads: drop policy, timestamps, reconnect with backoff, watchdog.

One ``SourceReader`` thread per source reads frames into a bounded queue. Live sources use
the ``latest`` policy (the newest frame replaces the oldest queued one, so latency stays
bounded); files use ``block`` (the reader waits for room, so nothing is lost).
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from streamcap.errors import BadInputError
from streamcap.live_sessions import open_session
from streamcap.types import Frame

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
URL_RE = re.compile(r"^(rtsp|rtsps|rtmp|rtmps|http|https|udp|tcp|srt)://", re.IGNORECASE)
DROP_POLICIES = ("latest", "block")
KINDS = ("webcam", "stream", "file", "images")

# A sentinel that a reader puts after its last frame.
EOS = object()

# user:password@ in any URL of a text, up to the last "@" before the path (a password may
# hold a raw "@"), and the values of query parameters that IP cameras use for credentials.
_USERINFO_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s\"'<>]*@")
_QUERY_CRED_RE = re.compile(
    r"([?&;](?:user|username|usr|login|pass|passwd|password|pwd|token|access_token|auth|key|apikey|api_key"
    r"|secret|sig|signature)=)[^&#\s]*", re.IGNORECASE)


def redact_url(uri: str) -> str:
    """``rtsp://user:pass@host/x`` -> ``rtsp://***@host/x``, ``...?user=a&pwd=b`` ->
    ``...?user=***&pwd=***``, wherever URLs occur in the text; other text unchanged."""
    return _QUERY_CRED_RE.sub(r"\1***", _USERINFO_RE.sub(r"\1***@", uri))


def source_kind(uri: str) -> str:
    """The kind of a source string: webcam index, stream URL, image(s) or video file."""
    if uri.isdigit():
        return "webcam"
    if URL_RE.match(uri):
        return "stream"
    if any(ch in uri for ch in "*?[") and not os.path.exists(uri):
        return "images"
    path = Path(uri)
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        return "images"
    return "file"


def default_drop_policy(kind: str) -> str:
    return "latest" if kind in ("webcam", "stream") else "block"


@dataclass(frozen=True)
class SourceConfig:
    """How to read one source. ``drop`` and ``name`` default by kind when left None."""

    uri: str
    name: str | None = None
    kind: str | None = None
    drop: str | None = None
    stride: int = 1
    queue_size: int = 4
    rtsp_transport: str | None = None  # tcp | udp | None (FFmpeg's default)
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0  # streams: the longest wait for the next packet
    first_frame_timeout_s: float = 30.0  # streams: the longest wait for a first keyframe while data flows
    watchdog_s: float = 10.0
    max_retries: int | None = None  # retries after a failed connect, per outage; None: forever
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    image_fps: float = 1.0  # stream time step for image folders
    realtime: bool = False  # pace a file at its own fps (simulates a live source)

    def resolved(self) -> "SourceConfig":
        kind = self.kind or source_kind(self.uri)
        if kind not in KINDS:
            raise BadInputError(f"unknown source kind {kind!r}; choose one of {', '.join(KINDS)}")
        drop = self.drop or default_drop_policy(kind)
        if drop not in DROP_POLICIES:
            raise BadInputError(f"unknown drop policy {drop!r}; choose latest or block")
        if self.stride < 1:
            raise BadInputError(f"--stride must be 1 or more, got {self.stride}")
        if self.max_retries is not None and self.max_retries < 0:
            raise BadInputError(f"--max-retries must be 0 or more, got {self.max_retries}")
        if self.rtsp_transport not in (None, "tcp", "udp"):
            raise BadInputError(f"--rtsp-transport must be tcp or udp, got {self.rtsp_transport!r}")
        name = self.name or default_source_name(self.uri, kind)
        return SourceConfig(**{**self.__dict__, "kind": kind, "drop": drop, "name": name})

    @property
    def live(self) -> bool:
        return (self.kind or source_kind(self.uri)) in ("webcam", "stream")


def default_source_name(uri: str, kind: str) -> str:
    if kind == "webcam":
        return f"webcam{uri}"
    if kind == "stream":
        return redact_url(uri)
    return Path(uri).name or uri


def list_images(uri: str) -> list[Path]:
    """The image files a folder, glob or single image path names, sorted."""
    path = Path(uri)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(uri) if Path(p).suffix.lower() in IMAGE_EXTS]
    return sorted(files)


def open_video_capture(cfg: SourceConfig) -> cv2.VideoCapture:
    """Open a video file with OpenCV's FFmpeg backend (live sources: see live_sessions)."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000),
    ]
    return cv2.VideoCapture(cfg.uri, cv2.CAP_FFMPEG, params)


@dataclass
class SourceInfo:
    """What is known about a source once opened."""

    fps: float = 0.0
    size: tuple[int, int] = (0, 0)
    frame_count: int = 0  # 0 when unknown (live)


def probe_file(cfg: SourceConfig) -> SourceInfo:
    """Open a file or image source once to check it and learn fps, size and length.

    Raises BadInputError with one line when it cannot be read.
    """
    if cfg.kind == "images":
        files = list_images(cfg.uri)
        if not files:
            raise BadInputError(f"no images found at {redact_url(cfg.uri)}")
        first = None
        for f in files:
            first = cv2.imread(str(f))
            if first is not None:
                break
        if first is None:
            raise BadInputError(f"none of the {len(files)} images at {redact_url(cfg.uri)} could be decoded")
        return SourceInfo(cfg.image_fps, (first.shape[1], first.shape[0]), len(files))
    path = Path(cfg.uri)
    if not path.exists():
        raise BadInputError(f"input not found: {redact_url(cfg.uri)}")
    if path.is_file() and path.stat().st_size == 0:
        raise BadInputError(f"input is empty (0 bytes): {redact_url(cfg.uri)}")
    cap = open_video_capture(cfg)
    try:
        if not cap.isOpened():
            raise BadInputError(f"cannot open video: {redact_url(cfg.uri)} (not a video file, or a codec FFmpeg lacks)")
        ok, img = cap.read()
        if not ok or img is None:
            raise BadInputError(f"cannot decode any frame of video: {redact_url(cfg.uri)}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not (0 < fps < 1000):
            fps = 25.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return SourceInfo(fps, (img.shape[1], img.shape[0]), max(count, 0))
    finally:
        cap.release()


StatusCallback = Callable[..., None]


class SourceReader(threading.Thread):
    """Reads one source into a bounded queue until the end of input or ``stop()``.

    ``on_status(source, status, **fields)`` is called for connected / lost / reconnected /
    stalled / gave_up / ended / resolution_changed / frame_error events.
    """

    def __init__(self, cfg: SourceConfig, on_status: StatusCallback | None = None) -> None:
        cfg = cfg.resolved()
        super().__init__(name=f"capture-{cfg.name}", daemon=True)
        self.cfg = cfg
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, cfg.queue_size))
        self.on_status = on_status or (lambda *a, **k: None)
        self.info = SourceInfo()
        self.frames_read = 0
        self.dropped = 0
        self.errors = 0
        self.ever_connected = False
        self.gave_up = False
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._force_reconnect = threading.Event()
        self._last_frame_mono = time.monotonic()
        self._connected = False
        self._t0: float | None = None
        self._file_end_s = 0.0

    # -- control -------------------------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    def check_watchdog(self, now: float | None = None) -> bool:
        """Called periodically by the pipeline: a connected live source that delivered nothing
        for ``watchdog_s`` is marked stalled and reconnected. Returns True when it fired."""
        if not self.cfg.live or not self._connected or self._force_reconnect.is_set():
            return False
        now = time.monotonic() if now is None else now
        silent = now - self._last_frame_mono
        if silent > self.cfg.watchdog_s:
            self.on_status(self.cfg.name, "stalled", silent_s=round(silent, 2))
            self._force_reconnect.set()
            return True
        return False

    # -- the thread ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self.cfg.kind == "images":
                self._run_images()
            elif self.cfg.live:
                self._run_live()
            else:
                self._run_file()
        except BaseException as err:  # reported by the pipeline, never lost in a thread
            self.error = err
            log.exception("reader %s failed", self.cfg.name)
        finally:
            self._put_eos()

    def _put_eos(self) -> None:
        while True:
            try:
                self.queue.put(EOS, timeout=0.1)
                return
            except queue.Full:
                if self.cfg.drop == "latest" or self._halt.is_set():
                    try:
                        self.queue.get_nowait()
                    except queue.Empty:
                        pass

    def _emit(self, image: np.ndarray, index: int, pts_s: float) -> bool:
        """Queue one frame under the drop policy; False when stopping."""
        now_mono = time.monotonic()
        self._last_frame_mono = now_mono
        frame = Frame(self.cfg.name, index, pts_s, time.time(), image, now_mono)
        self.frames_read += 1
        if self.cfg.drop == "latest":
            while True:
                try:
                    self.queue.put_nowait(frame)
                    return not self._halt.is_set()
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        while not self._halt.is_set():
            try:
                self.queue.put(frame, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read_frames(self, cap: cv2.VideoCapture) -> Iterator[tuple[int, np.ndarray, float]]:
        """Yield (index, image, pos_msec) honouring the stride by grabbing skipped frames;
        ``self._file_end_s`` follows the time of the last frame read or grabbed."""
        index = 0
        stride = self.cfg.stride
        while not self._halt.is_set():
            if stride > 1 and index % stride:
                if not cap.grab():
                    return
                self._file_end_s = max(self._file_end_s, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
                index += 1
                continue
            ok, img = cap.read()
            if not ok or img is None:
                return
            pos_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            self._file_end_s = max(self._file_end_s, pos_ms / 1000.0)
            yield index, img, pos_ms
            index += 1

    def _run_file(self) -> None:
        cap = open_video_capture(self.cfg)
        try:
            if not cap.isOpened():
                raise BadInputError(f"cannot open video: {redact_url(self.cfg.uri)}")
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            fps = fps if 0 < fps < 1000 else 25.0
            self.info = SourceInfo(fps, (0, 0), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
            self._connected = self.ever_connected = True
            self._file_end_s = 0.0
            clock0: float | None = None  # realtime: the wall time at which stream time 0 plays
            stopped = False
            for index, img, pos_ms in self._read_frames(cap):
                # Container time when FFmpeg gives one, else computed from fps.
                pts = pos_ms / 1000.0 if pos_ms and pos_ms > 0 else index / fps
                if index > 0 and pos_ms <= 0:
                    pts = index / fps
                if self.cfg.realtime:
                    # Paced by the frames' own timestamps: a file with sparse or variable-rate
                    # frames plays as long as its stream lasts, not frames / nominal fps.
                    if clock0 is None:
                        clock0 = time.monotonic() - pts
                    delay = clock0 + pts - time.monotonic()
                    if delay > 0 and self._halt.wait(delay):
                        stopped = True
                        break
                if self.info.size == (0, 0):
                    self.info.size = (img.shape[1], img.shape[0])
                if not self._emit(img, index, pts):
                    stopped = True
                    break
            if not stopped and not self._halt.is_set():
                self._note_short_file(cap)
            self.on_status(self.cfg.name, "ended", frames=self.frames_read)
        finally:
            cap.release()

    def _note_short_file(self, cap: cv2.VideoCapture) -> None:
        """A file whose decoding stopped well before the end of its stream was cut short or is
        damaged past that point: say so in the log instead of ending quietly.

        The end is judged by time, not by the container's frame count: an AVI header counts
        empty index entries (dropped frames of a variable-rate recording) as frames, so a file
        with 68 real frames over 29.6 s claims 444 and is still whole. The stream's length is
        the container's frame count over its frame rate (exact for such an AVI; an
        underestimate, never an overestimate, for variable-rate MP4)."""
        expected = self.info.frame_count
        fps = self.info.fps
        decoded = int(cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)
        if expected <= 0 or decoded <= 0 or fps <= 0:
            return
        length_s = expected / fps
        reached_s = self._file_end_s + 1.0 / fps  # the last frame lasts one frame period
        if length_s - reached_s <= max(2.0 / fps, length_s / 50):
            return
        missing = max(expected - decoded, 1)
        self.errors += missing
        self.on_status(self.cfg.name, "truncated", decoded_frames=decoded, expected_frames=expected,
                       missing_frames=missing, decoded_until_s=round(reached_s, 3), length_s=round(length_s, 3),
                       message=f"input ended at {reached_s:.1f} s of {length_s:.1f} s ({decoded} of "
                               f"{expected} frames; truncated or damaged file); the rest was skipped")

    def _run_images(self) -> None:
        files = list_images(self.cfg.uri)
        self.info = SourceInfo(self.cfg.image_fps, (0, 0), len(files))
        self._connected = self.ever_connected = True
        for index, path in enumerate(files):
            if self._halt.is_set():
                break
            if index % self.cfg.stride:
                continue
            img = cv2.imread(str(path))
            if img is None:
                self.errors += 1
                self.on_status(self.cfg.name, "frame_error", frame_index=index,
                               message=f"cannot decode image {path.name}; skipped")
                continue
            if not self._emit(img, index, index / self.cfg.image_fps):
                break
        self.on_status(self.cfg.name, "ended", frames=self.frames_read)

    def _run_live(self) -> None:
        """Connect, read, and on loss reconnect with capped exponential backoff.

        A source counts as (re)connected at its first frame, not when the open succeeds: a
        server that accepts the connection but sends nothing (its camera or publisher gone)
        is a failed attempt with backoff, and the outage lasts until frames flow again. A
        stream that sends data but no keyframe yet is waited for (``first_frame_timeout_s``),
        not failed at ``read_timeout_s``; the watchdog only watches connections with frames.
        ``max_retries`` N: after a failed attempt, N more (N + 1 in all per outage), then give up.
        """
        attempt = 0
        index = 0
        lost_at: float | None = None
        last_size: tuple[int, int] | None = None
        self._t0 = None
        stride = self.cfg.stride

        def keep() -> bool:
            return index % stride == 0

        while not self._halt.is_set():
            session = open_session(self.cfg)
            got_frame = False
            try:
                if session.open():
                    self._force_reconnect.clear()
                    self.info.fps = session.fps
                    for img in session.frames(self._should_hang_up, keep):
                        idx = index
                        index += 1
                        self._last_frame_mono = time.monotonic()
                        if not got_frame:
                            got_frame = self._connected = True
                            attempt = 0
                            if lost_at is None and not self.ever_connected:
                                self.on_status(self.cfg.name, "connected")
                            elif lost_at is not None:
                                self.on_status(self.cfg.name, "reconnected",
                                               outage_s=round(time.monotonic() - lost_at, 3))
                            self.ever_connected = True
                            lost_at = None
                        if img is None:  # skipped by the stride
                            continue
                        size = (img.shape[1], img.shape[0])
                        if last_size is not None and size != last_size:
                            self.on_status(self.cfg.name, "resolution_changed",
                                           old_size=list(last_size), new_size=list(size))
                        last_size = self.info.size = size
                        now = time.monotonic()
                        if self._t0 is None:
                            self._t0 = now
                        # Live stream time: seconds since the first frame, monotonic across reconnects.
                        if not self._emit(img, idx, now - self._t0):
                            break
            finally:
                session.close()
                self._connected = False
            if self._halt.is_set():
                break
            if got_frame:
                lost_at = time.monotonic()
                self.on_status(self.cfg.name, "lost", frames=self.frames_read,
                               stalled=self._force_reconnect.is_set())
                self._force_reconnect.clear()
                continue
            attempt += 1
            if self.cfg.max_retries is not None and attempt > self.cfg.max_retries:
                self.gave_up = True
                self.on_status(self.cfg.name, "gave_up", attempts=attempt, retries=attempt - 1,
                               reason=redact_url(session.failure()),
                               message=f"no connection after {_plural(attempt, 'attempt')} "
                                       f"({_retries_text(attempt - 1)})")
                return
            delay = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** (attempt - 1))
            self.on_status(self.cfg.name, "connect_failed", attempt=attempt, retry_in_s=round(delay, 2),
                           reason=redact_url(session.failure()))
            self._force_reconnect.clear()
            self._halt.wait(delay)
        self.on_status(self.cfg.name, "ended", frames=self.frames_read)

    def _should_hang_up(self) -> bool:
        return self._halt.is_set() or self._force_reconnect.is_set()


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _retries_text(retries: int) -> str:
    return "no retries" if retries == 0 else f"the first and {_plural(retries, 'retry', 'retries')}"
