"""Scene captions: when each source is captioned, what each frame carries, and the live caption worker.

Files (every source read with ``block``): the producer captions a frame itself when the schedule is
due, so a file's captions are the same on every run. Live: the producer offers each processed frame
and a caption worker, whenever it is free, takes the newest frame of each source in turn and
captions it if due (the schedule counts only frames it captions), so captioning never stalls
segmentation and a slow caption model describes the present. A captioner that raises follows the
stage error policy, as the segmenter does. The host is the ``Pipeline``.

A window captioner (one with ``caption_window``, as ``Captioner``) gets the frames sampled since
the source's previous caption (small thumbnails, ``window - 1`` evenly spaced over the caption
interval) with the due frame, and the due frame's object labels (detections scoring at least
``OBJECT_MIN_SCORE``), so the caption describes the last seconds and names what the segmenter
sees; its scene-change cue lets the smoother show a hard cut at once, and the smoother compares
captions by the model's word embeddings.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from streamcap.caption.smoothing import FrameWindow
from streamcap.capture import redact_url
from streamcap.errors import StageError
from streamcap.sinks import iso_time
from streamcap.types import Caption, Detections, Frame

log = logging.getLogger("streamcap.pipeline")

# A frame whose pixels barely vary (black, blank, the dark end of a fade) shows no scene: the
# caption model can only invent one, so it is not captioned (the schedule waits for content).
BLANK_STD = 4.0
OBJECT_MIN_SCORE = 0.5


def detection_labels(det: Detections | None, min_score: float = OBJECT_MIN_SCORE) -> list[str] | None:
    """The class names of a frame's detections scoring at least ``min_score``; None without any."""
    if det is None or not len(det) or not len(det.names):
        return None
    return [str(det.names[int(label)]) for label, score in zip(det.labels, det.scores)
            if score >= min_score and 0 <= int(label) < len(det.names)] or None


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
        self._caption_latest: dict[str, tuple[Frame, Detections | None]] = {}  # live: the newest per source
        self._windows: dict[str, FrameWindow] = {}  # per video source: thumbnails since its last caption
        if captioner is not None and hasattr(captioner, "caption_window"):
            from streamcap.caption.flicker import window_sampler

            for name in video_sources:
                interval = getattr(self._schedules.get(name), "interval_s", None)
                window = window_sampler(captioner, interval) if interval else None
                if window is not None:
                    self._windows[name] = window
            similarity = captioner.word_vectors() if hasattr(captioner, "word_vectors") else None
            for smoother in self._smoothers.values():
                if similarity is not None and hasattr(smoother, "similarity"):
                    smoother.similarity = similarity

    @property
    def needs_worker(self) -> bool:
        return self.captioner is not None and not self._caption_sync

    def wake(self) -> None:
        with self._caption_cv:
            self._caption_cv.notify_all()

    def offer(self, frame: Frame, det: Detections | None = None) -> None:
        """Files: caption here when due (deterministic). Live: offer the frame (with its
        detections) to the caption worker, which takes the newest one when it is free."""
        if self.captioner is None:
            return
        if self._caption_sync:
            if self._caption_due(frame):
                self._run_caption(frame, det)
            else:
                self._sample(frame)
            return
        self._sample(frame)
        with self._caption_cv:
            self._caption_latest[frame.source] = (frame, det)
            self._caption_cv.notify()

    def _sample(self, frame: Frame) -> None:
        """Keep a thumbnail of the frame for the source's next window caption when one is due."""
        window = self._windows.get(frame.source)
        if window is None or not window.wants(frame.pts_s) or not has_content(frame.image):
            return
        thumb = self.captioner.thumbnail(frame)
        with self._caption_cv:
            window.add(frame.pts_s, (frame.index, thumb))

    def _window(self, frame: Frame) -> list | None:
        """The thumbnails to caption ``frame`` with (None: not a window captioner)."""
        if not hasattr(self.captioner, "caption_window"):
            return None
        window = self._windows.get(frame.source)
        with self._caption_cv:
            taken = window.take(frame.pts_s) if window is not None else []
        return [thumb for index, thumb in taken if index != frame.index] + [self.captioner.thumbnail(frame)]

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

    def _run_caption(self, frame: Frame, det: Detections | None = None) -> None:
        scene_change, picture = False, None
        try:
            thumbs = self._window(frame)
            if thumbs is None:
                raw, score = self.captioner(frame)
            else:
                result = self.captioner.caption_window(thumbs, str(frame.source), detection_labels(det))
                raw, score, scene_change = result.text, result.score, result.scene_change
                picture = result.picture
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
            cue = {"scene_change": True} if scene_change else {}  # a smoother of one's own may lack these
            if picture is not None and hasattr(smoother, "still_runs"):
                cue["picture"] = picture
            shown, changed = smoother.update(raw, score, frame.pts_s, **cue)
        caption = Caption(shown, raw, float(score), frame.index, changed)
        self._captions[frame.source] = caption
        self.host.stats.add_caption()
        self.host._log("caption", source=frame.source, frame_index=frame.index, pts_s=round(frame.pts_s, 3),
                  frame_time=iso_time(frame.wall_ts), raw=raw, shown=shown, score=round(float(score), 4),
                  changed=changed)

    def _next_caption_frame(self, turn: int) -> tuple[tuple[Frame, Detections | None] | None, int]:
        """The newest processed frame of the next source (round-robin) whose caption is due."""
        names = [r.cfg.name for r in self.host.readers]
        with self._caption_cv:
            if not self._caption_latest:
                self._caption_cv.wait(0.1)
            for k in range(len(names)):
                name = names[(turn + k) % len(names)]
                item = self._caption_latest.pop(name, None)
                if item is not None and self._caption_due(item[0]):
                    return item, (turn + k + 1) % len(names)
        return None, turn

    def run(self) -> None:
        turn = 0
        while not self.host.stopping():
            item, turn = self._next_caption_frame(turn)
            if item is not None:
                self._run_caption(*item)
