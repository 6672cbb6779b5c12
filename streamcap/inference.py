"""The every-frame inference worker (``seg_every`` 1): every frame through the stage, then to the writer.

It takes batches round-robin across sources (``Pipeline.next_frames``), runs the stage under the
stage error policy (``Pipeline.call_stage``), gives each frame's objects ids matched to the previous
frame's (unless tracking is off) and hands the writer a ``FrameResult`` (``Pipeline.emit``). The
host is the ``Pipeline``; the end marker for the writer is the host's to send.
"""

from __future__ import annotations

from typing import Any

from streamcap.tracking import DetectionTracker


class InferenceWorker:
    def __init__(self, host: Any) -> None:
        self.host = host

    def run(self) -> None:
        host = self.host
        pending = {r.cfg.name: r for r in host.readers}
        trackers = {name: DetectionTracker() for name in pending} if host.config.track else {}
        while pending and not host.stopping():
            frames = host.next_frames(pending)
            if not frames:
                continue
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
