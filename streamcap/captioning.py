"""Scene captions: when each source is captioned, what each frame carries, and the live caption worker.

Files (every source read with ``block``): the producer captions a frame itself when the schedule is
due, so a file's captions are the same on every run. Live: the producer offers each processed frame
and a caption worker, whenever it is free, takes the newest frame of each source in turn and
captions it if due (the schedule counts only frames it captions), so captioning never stalls
segmentation and a slow caption model describes the present. A captioner that raises follows the
stage error policy, as the segmenter does. The host is the ``Pipeline``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from streamcap.capture import redact_url
from streamcap.errors import StageError
from streamcap.sinks import iso_time
from streamcap.types import Caption, Frame

log = logging.getLogger("streamcap.pipeline")

# A frame whose pixels barely vary (black, blank, the dark end of a fade) shows no scene: the
# caption model can only invent one, so it is not captioned (the schedule waits for content).
BLANK_STD = 4.0


def has_content(image: np.ndarray) -> bool:
    """False for a near-uniform frame (standard deviation of a subsample under BLANK_STD grey levels)."""
    return float(image[::8, ::8].std()) >= BLANK_STD


class Captions:
    def __init__(self, host: Any, captioner: Any, schedule_factory: Callable[[], Any] | None,
                 smoother_factory: Callable[[], Any] | None) -> None:
        self.host = host
        self.captioner = captioner
        readers = host.readers
        self._captions: dict[str, Caption] = {}  # the latest caption per source
        self._attached: dict[str, Caption | None] = {}  # the caption the last processed frame carried
        # Still images are separate scenes: each is captioned, nothing is smoothed across them.
        self._stills = {r.cfg.name for r in readers if r.cfg.kind == "images"}
        video_sources = [r.cfg.name for r in readers if r.cfg.name not in self._stills]
        self._schedules = {name: schedule_factory() for name in video_sources} if schedule_factory else {}
        self._smoothers = {name: smoother_factory() for name in video_sources} if smoother_factory else {}
        self._caption_sync = all(r.cfg.drop == "block" for r in readers)
        self._caption_failures = 0  # consecutive captioner failures
        self._caption_cv = threading.Condition()
        self._caption_latest: dict[str, Frame] = {}  # live: the newest processed frame per source

    @property
    def needs_worker(self) -> bool:
        return self.captioner is not None and not self._caption_sync

    def wake(self) -> None:
        with self._caption_cv:
            self._caption_cv.notify_all()

    def offer(self, frame: Frame) -> None:
        """Files: caption here when due (deterministic). Live: offer the frame to the caption
        worker, which takes the newest one when it is free."""
        if self.captioner is None:
            return
        if self._caption_sync:
            if self._caption_due(frame):
                self._run_caption(frame)
            return
        with self._caption_cv:
            self._caption_latest[frame.source] = frame
            self._caption_cv.notify()

    def _caption_due(self, frame: Frame) -> bool:
        """Called only for frames that will be captioned at once, so the schedule counts those."""
        if frame.source in self._stills:
            return True  # each image is its own scene
        if not has_content(frame.image):
            return False
        schedule = self._schedules.get(frame.source)
        return schedule is None or schedule.due(frame.index, frame.pts_s)

    def attach(self, source: str) -> tuple[Caption | None, bool]:
        """The caption a processed frame carries, and whether the shown text changed with it
        (true on the first frame that carries a changed caption, on either path)."""
        caption = self._captions.get(source)
        new = caption is not None and caption is not self._attached.get(source) and caption.changed
        self._attached[source] = caption
        return caption, new

    def _run_caption(self, frame: Frame) -> None:
        try:
            raw, score = self.captioner(frame)
        except Exception as err:  # the documented stage policy, as for the inference stage
            self._caption_failures += 1
            self.host.stats.add_stage_errors(1)
            message = redact_url(f"{type(err).__name__}: {err}")
            log.warning("captioner failed on frame %d of %s: %s", frame.index, frame.source, message)
            self.host._log("stage_error", source=frame.source, frame_index=frame.index, stage="caption",
                      message=message[:500])
            if (self.host.config.on_stage_error == "stop"
                    or self._caption_failures >= self.host.config.max_consecutive_errors):
                self.host._fail(StageError(f"captioner failed: {message}"))
            return
        self._caption_failures = 0
        smoother = self._smoothers.get(frame.source)
        prev = self._captions.get(frame.source)
        if smoother is None:
            shown, changed = raw, prev is None or raw != prev.text
        else:
            shown, changed = smoother.update(raw, score, frame.pts_s)
        caption = Caption(shown, raw, float(score), frame.index, changed)
        self._captions[frame.source] = caption
        self.host.stats.add_caption()
        self.host._log("caption", source=frame.source, frame_index=frame.index, pts_s=round(frame.pts_s, 3),
                  frame_time=iso_time(frame.wall_ts), raw=raw, shown=shown, score=round(float(score), 4),
                  changed=changed)

    def _next_caption_frame(self, turn: int) -> tuple[Frame | None, int]:
        """The newest processed frame of the next source (round-robin) whose caption is due."""
        names = [r.cfg.name for r in self.host.readers]
        with self._caption_cv:
            if not self._caption_latest:
                self._caption_cv.wait(0.1)
            for k in range(len(names)):
                name = names[(turn + k) % len(names)]
                frame = self._caption_latest.pop(name, None)
                if frame is not None and self._caption_due(frame):
                    return frame, (turn + k + 1) % len(names)
        return None, turn

    def run(self) -> None:
        turn = 0
        while not self.host.stopping():
            frame, turn = self._next_caption_frame(turn)
            if frame is not None:
                self._run_caption(frame)
