"""The writer worker: restores each source's order, draws, writes the video and the log, calls back.

It receives ``(source, seq, FrameResult)`` items from the inference worker (every frame segmented)
or the carry worker (keyframes), and ``END`` after the last one. Its host is the ``Pipeline``,
which owns the sinks, the statistics and the one shutdown path.
"""

from __future__ import annotations

import queue
import time
from typing import Any

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
        needs_image = host.video is not None or host.display or (
            host.on_frame is not None and _wants_image(host.on_frame, result))
        image = frame.image
        if needs_image and host.renderer is not None:
            image = host.renderer.annotate(frame.image, result, host.last_stats if host.hud else None,
                                           notice=host.notice)
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


def _wants_image(on_frame: Any, result: FrameResult) -> bool:
    """Whether ``on_frame`` needs this frame drawn: asked through its ``wants_image(result)``
    (on the callable or, for a bound method, on its object: the record tap, the web dashboard,
    which want drawn frames only while someone watches); any other callback always does."""
    wants = getattr(on_frame, "wants_image", None) or getattr(getattr(on_frame, "__self__", None), "wants_image", None)
    return True if wants is None else bool(wants(result))
