"""One connection to a live source: open it, then yield its decoded frames until it ends.

Stream URLs (RTSP, HTTP, RTMP, ...) are read with PyAV, which sees packets as well as frames,
so a connection that carries data but has not yet decoded a frame (a camera whose next
keyframe is still seconds away) is told apart from one that carries nothing:

- ``--read-timeout``: the longest wait for the next packet; a connection silent that long ends.
- ``first_frame_timeout_s``: the longest wait for the first decodable frame while packets do
  arrive (default 30 s, above the 20 s keyframe interval of the slowest common cameras).

Webcams are read with OpenCV (a device delivers decoded frames or nothing).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

if TYPE_CHECKING:
    from streamcap.capture import SourceConfig

Stop = Callable[[], bool]
Keep = Callable[[], bool]


class StreamSession:
    """A URL read with PyAV. ``frames()`` yields a BGR image per decoded frame (None for a
    frame ``keep()`` declines: the stride), and records why it ended in ``end``:
    ``stopped``, ``eos``, ``timeout`` (no packet for --read-timeout), ``no_keyframe``, ``error``."""

    def __init__(self, cfg: "SourceConfig") -> None:
        self.cfg = cfg
        self.fps = 0.0
        self.packets = 0  # video packets received on this connection
        self.end = ""
        self.error = ""
        self._container = None
        self._stream = None

    def open(self) -> bool:
        import av

        options = {}
        if self.cfg.rtsp_transport and self.cfg.uri.lower().startswith("rtsp"):
            options["rtsp_transport"] = self.cfg.rtsp_transport
        try:
            self._container = av.open(self.cfg.uri, options=options,
                                      timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s))
        except (av.error.FFmpegError, OSError) as err:
            self.error = str(err)
            return False
        if not self._container.streams.video:
            self.error = "no video stream"
            self.close()
            return False
        self._stream = self._container.streams.video[0]
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else 25.0
        return True

    def frames(self, stop: Stop, keep: Keep) -> Iterator[np.ndarray | None]:
        import av

        opened_at = time.monotonic()
        decoded = 0
        try:
            for packet in self._container.demux():
                if stop():
                    self.end = "stopped"
                    return
                if not decoded and time.monotonic() - opened_at > self.cfg.first_frame_timeout_s:
                    self.end = "no_keyframe"
                    return
                if packet.stream is not self._stream:
                    continue
                if packet.size:
                    self.packets += 1
                try:
                    images = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a damaged packet (UDP loss): the decoder picks up at the next one
                for frame in images:
                    decoded += 1
                    yield frame.to_ndarray(format="bgr24") if keep() else None
            self.end = "eos"
        except av.error.ExitError:
            self.end = "timeout"
        except (av.error.FFmpegError, OSError) as err:
            self.end, self.error = "error", str(err)

    def failure(self) -> str:
        """Why a connection that gave no frame failed, for ``connect_failed``'s ``reason``."""
        if self._stream is None:
            return "cannot open"
        if self.end == "no_keyframe":
            return (f"no decodable frame within {self.cfg.first_frame_timeout_s:g} s "
                    f"({self.packets} packets, no keyframe)")
        if self.packets == 0:
            return "no frames after opening"
        if self.end == "eos":
            return "stream ended before its first frame"
        if self.end == "error":
            return f"read error before the first frame: {self.error}"
        return "data stopped before the first frame"

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a connection that already failed
                pass


class WebcamSession:
    """A webcam read with OpenCV; the stride's skipped frames are grabbed, not decoded."""

    def __init__(self, cfg: "SourceConfig") -> None:
        self.cfg = cfg
        self.fps = 0.0
        self.end = ""
        self.opened = False
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> bool:
        self._cap = cv2.VideoCapture(int(self.cfg.uri))
        self.opened = self._cap.isOpened()
        if not self.opened:
            return False
        fps = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = fps if 0 < fps < 1000 else 25.0
        return True

    def frames(self, stop: Stop, keep: Keep) -> Iterator[np.ndarray | None]:
        assert self._cap is not None
        while not stop():
            if not keep():
                if not self._cap.grab():
                    break
                yield None
                continue
            ok, img = self._cap.read()
            if not ok or img is None:
                break
            yield img
        self.end = "stopped" if stop() else "eos"

    def failure(self) -> str:
        return "no frames after opening" if self.opened else "cannot open"

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


def open_session(cfg: "SourceConfig") -> StreamSession | WebcamSession:
    return WebcamSession(cfg) if cfg.kind == "webcam" else StreamSession(cfg)
