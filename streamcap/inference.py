"""The every-frame inference worker (``seg_every`` 1): every frame through the stage, then to the writer.

It takes batches round-robin across sources (``Pipeline.next_frames``), runs the stage under the
stage error policy (``Pipeline.call_stage``), gives each frame's objects ids matched to the previous
frame's (unless tracking is off) and hands the writer a ``FrameResult`` (``Pipeline.emit``). The
host is the ``Pipeline``; the end marker for the writer is the host's to send.

A stage with ``overlap`` true and a ``prefetch(frames)`` method (the segmenter on a GPU) gets its
next batch read and prepared (resized, copied to the device) by a feeder thread while the current
batch runs, one batch ahead: the host work no longer waits for the model, nor the model for it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

from streamcap.tracking import DetectionTracker

_DONE = object()


class InferenceWorker:
    def __init__(self, host: Any) -> None:
        self.host = host

    def run(self) -> None:
        host = self.host
        pending = {r.cfg.name: r for r in host.readers}
        trackers = {name: DetectionTracker() for name in pending} if host.config.track else {}
        prefetch = getattr(host.stage, "prefetch", None) if getattr(host.stage, "overlap", False) is True else None
        batches = self._prefetched(pending, prefetch) if prefetch is not None else self._batches(pending)
        try:
            for frames in batches:
                outputs = host.call_stage(frames)
                if outputs is None:  # failed: logged and counted; the policy may have stopped the run
                    continue
                host.stats.add_keyframes(len(frames))  # every processed frame is a keyframe here
                for frame, det in zip(frames, outputs):
                    extras: dict[str, Any] = {"keyframe": True}
                    if frame.source in trackers and det is not None:
                        extras["track_ids"] = trackers[frame.source].update(det, frame.image.shape[:2])
                    if not host.emit(frame, det, extras):
                        return
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _batches(self, pending: dict) -> Iterator[list]:
        host = self.host
        while pending and not host.stopping():
            frames = host.next_frames(pending)
            if frames:
                yield frames

    def _prefetched(self, pending: dict, prefetch: Any) -> Iterator[list]:
        """The batches of ``_batches``, read and prepared one ahead by a feeder thread."""
        ready: queue.Queue = queue.Queue(maxsize=1)
        done = threading.Event()

        def put(item: Any) -> bool:
            while not done.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def feed() -> None:
            try:
                for frames in self._batches(pending):
                    if done.is_set():
                        return
                    try:
                        prefetch(frames)
                    except Exception:  # noqa: BLE001 - the stage call prepares them again and reports it
                        pass
                    if not put(frames):
                        return
                put(_DONE)
            except BaseException as err:  # a reader error: raised in the worker, which reports it
                put(err)

        feeder = threading.Thread(target=feed, name="inference-prefetch", daemon=True)
        feeder.start()
        try:
            while True:
                try:
                    item = ready.get(timeout=0.1)
                except queue.Empty:
                    if not feeder.is_alive() and ready.empty():
                        return
                    continue
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            done.set()
            feeder.join(timeout=2.0)
