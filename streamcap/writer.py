"""The writer worker: restores each source's order, draws, writes the video and the log, calls back.

It receives ``(source, seq, FrameResult)`` items from the inference worker (every frame segmented)
or the carry worker (keyframes), and ``END`` after the last one. Its host is the ``Pipeline``,
which owns the sinks, the statistics and the one shutdown path.
"""

from __future__ import annotations

import math
import queue
import time
from typing import Any

import cv2
import numpy as np

from streamcap.sinks import iso_time
from streamcap.types import FrameResult

END = object()  # the producer's end marker for the writer


class Writer:
    def __init__(self, host: Any) -> None:
        self.host = host

    def run(self) -> None:
        host = self.host
        pending: dict[tuple[str, int], FrameResult] = {}
        expected: dict[str, int] = {r.cfg.name: 0 for r in host.readers}
        try:
            while True:
                try:
                    item = host.results.get(timeout=0.1)
                except queue.Empty:
                    # Stopping: nothing more is coming once the producer has ended (its end
                    # marker may not have fit), or once the grace is over.
                    if host._stop.is_set() and (host._past_grace() or (
                            not host._worker_alive(host.producer) and host.results.empty())):
                        break
                    continue
                if item is END or host._abandoned.is_set():
                    break
                source, seq, result = item
                pending[(source, seq)] = result
                # Restore order explicitly: each source's results go out by sequence number.
                while (source, expected[source]) in pending:
                    self.write_one(pending.pop((source, expected[source])))
                    expected[source] += 1
            for key in sorted(pending):
                if host._abandoned.is_set():
                    break
                self.write_one(pending.pop(key))
        finally:
            host._close_video()

    def write_one(self, result: FrameResult) -> None:
        """Draw, write the video, count and log the frame, then the callbacks (so a callback
        that never returns leaves every frame in the video counted and logged)."""
        host = self.host
        if host._abandoned.is_set():  # shutdown gave up on this thread: no more output or callbacks
            return
        frame = result.frame
        needs_image, width = True, None
        if host.video is None and not host.display:
            needs_image, width = _wants_image(host.on_frame, result) if host.on_frame is not None else (False, None)
        image = frame.image
        if needs_image and host.renderer is not None:
            source, owned = frame.image, False
            if width is not None and source is not None and source.shape[1] > width:
                # Only smaller consumers (the dashboard's tiles): draw onto the frame scaled down,
                # a copy of our own, so no second copy to draw on.
                source, owned = scale_to_width(source, width), True
            image = host.renderer.annotate(source, result, host.last_stats if host.hud else None,
                                           notice=host.notice, in_place=owned)
        if host.video is not None:
            with host._video_lock:
                if host._video_closed:  # closed by shutdown after the stop grace: nothing more goes in
                    return
                host.video.write(image, frame.pts_s)
            if host._abandoned.is_set():  # an encoder that returned after the grace: the run is over
                return
        latency_ms = (time.monotonic() - frame.mono_ts) * 1000.0
        host.stats.add_written(latency_ms, frame.source)
        every = host.config.log_every
        if host.log_sink is not None and every > 0 and host.stats.written % every == 0:
            host._log("frame", source=frame.source, frame_index=frame.index, pts_s=round(frame.pts_s, 3),
                      frame_time=iso_time(frame.wall_ts), latency_ms=round(latency_ms, 1),
                      keyframe=bool(result.extras.get("keyframe", result.detections is not None)),
                      detections=self.summary(result),
                      caption=result.caption.text if result.caption else None)
        if host.display:
            try:
                host.display_slot.get_nowait()
            except queue.Empty:
                pass
            host.display_slot.put_nowait(image)
        if host.on_frame is not None:
            host.on_frame(result, image)
        if host.on_result is not None:
            host.on_result(result)

    def summary(self, result: FrameResult) -> dict | None:
        det = result.detections
        if det is None or self.host.summarize is None:
            return None
        out = self.host.summarize(det)
        ids = result.extras.get("track_ids")
        if ids is not None and "objects" in out:
            for obj, tid in zip(out["objects"], ids):
                obj["track_id"] = int(tid)
        return out


def scale_to_width(image: np.ndarray, width: int, band_px: int = 1 << 16) -> np.ndarray:
    """``image`` scaled down to ``width`` (bilinear), in horizontal bands of at most ``band_px``
    output pixels. One cv2.resize of a whole frame goes to OpenCV's thread pool, whose workers
    then spin-wait: about 0.5 ms of CPU more than the resize itself, per frame; a band that small
    runs on the calling thread. Band edges are placed at the same scale, so the seams do not show."""
    h, w = image.shape[:2]
    out_h = max(1, round(h * width / w))
    step = out_h // math.gcd(h, out_h)  # bands of a multiple of this many rows start on a source row
    rows = band_px // width // step * step
    if rows < 1 or rows >= out_h:
        return cv2.resize(image, (width, out_h), interpolation=cv2.INTER_LINEAR)
    out = np.empty((out_h, width) + image.shape[2:], image.dtype)
    for y0 in range(0, out_h, rows):
        y1 = min(out_h, y0 + rows)
        s0, s1 = y0 * h // out_h, -(-y1 * h // out_h)
        cv2.resize(image[s0:s1], (width, y1 - y0), dst=out[y0:y1], interpolation=cv2.INTER_LINEAR)
    return out


def _wants_image(on_frame: Any, result: FrameResult) -> tuple[bool, int | None]:
    """Whether ``on_frame`` needs this frame drawn, and at what width (None: full size): asked
    through its ``wants_image(result)`` (on the callable or, for a bound method, on its object:
    the record tap, the web dashboard, which want drawn frames only while someone watches, and
    then only as wide as a tile; see ``streamcap.tap``); any other callback always wants the
    full frame."""
    wants = getattr(on_frame, "wants_image", None) or getattr(getattr(on_frame, "__self__", None), "wants_image", None)
    if wants is None:
        return True, None
    answer = wants(result)
    if isinstance(answer, bool) or not isinstance(answer, int):
        return bool(answer), None
    return answer > 0, answer if answer > 0 else None
