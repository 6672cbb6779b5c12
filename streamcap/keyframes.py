"""Keyframe segmentation: the model runs on some frames, every frame is drawn with carried masks.

```
reader ──► every frame ──────────────────────────► carry worker (flow + tracks) ──► writer
   └─────► newest frame when free ─► keyframe worker ──┘ (a late result is carried forward)
```

``KeyframeWorker`` (one thread) runs the model on the frames the carry worker asks for, one
request per source pending at a time (a newer request replaces an older one). ``CarryWorker`` (one
thread) takes every frame from the readers, asks for keyframes (``seg_every`` N: frames 0, N, 2N...
of each source; ``auto``: whenever the keyframe worker is free), carries each source's keyframe
objects to the frame with ``carry.Carrier`` and hands a ``FrameResult`` to the writer, as the
every-frame inference worker does. Its ``extras`` hold ``keyframe`` (the model ran on this frame)
and ``track_ids`` (one per object, unless tracking is off).

Sources read with the ``block`` policy (files) wait at each keyframe for its result, so a file
gives the same output on every run: keyframe frames carry the model's own objects, the frames after
them carry those objects forward. Live sources never wait: a result arrives after its frame was
written and is carried forward through the frames seen since (``Carrier.keyframe(..., frame=k)``),
so it is drawn where the objects are now, from the next frame on.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import cv2
import numpy as np

from streamcap.carry import Carrier, CarryConfig
from streamcap.errors import BadInputError
from streamcap.tracking import Tracker, box_masks
from streamcap.types import Detections, Frame

AUTO = "auto"
LIVE_HISTORY = 128  # frames a live carrier keeps for late keyframes (5 s at 25 fps)
# A late live result is carried forward through at most this many of the frames seen since (evenly
# spaced): the carry worker catches up in about 8 flows, not one per frame (38 at 24 fps for a 1.6 s
# model), so the frames behind it are not held up.
LIVE_CATCHUP_STEPS = 8
ACTIVE_S = 1.0  # auto: a live source that delivered a frame this recently takes its turn at the model
# auto: every frame is segmented while the model's time per frame, times the frames a second the live
# sources deliver, stays under AUTO_ENTER; keyframes again once it passes AUTO_EXIT (hysteresis).
AUTO_ENTER = 0.7
AUTO_EXIT = 0.9


def parse_seg_every(value: Any) -> int | str:
    """``auto`` or a whole number >= 1 (from the command line or the API)."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = int(value)
        except ValueError:
            raise BadInputError(f"--seg-every must be auto or a whole number of frames, 1 or more; got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadInputError(f"--seg-every must be auto or a whole number of frames, 1 or more; got {value!r}")
    return int(value)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy boxes around (N, H, W) bool masks (x2, y2 exclusive, as the model's)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        x, y, w, h = cv2.boundingRect(m.view(np.uint8))
        boxes[i] = (x, y, x + w, y + h)
    return boxes


class AutoRate:
    """``auto`` on live sources: segment every frame (no carrying, no carry latency) while the model
    keeps up with the frames arriving, keyframes when it does not.

    The load is the model's seconds per frame (a running mean of its calls) times the frames a
    second of the sources active in the last ACTIVE_S (from their frame timestamps and indices, so
    frames the reader dropped while the model was busy still count as frames to keep up with).
    Keyframes at first; every frame once the load is under ``enter``; keyframes again once it is
    over ``exit``.
    """

    def __init__(self, enter: float = AUTO_ENTER, exit: float = AUTO_EXIT, smooth: float = 0.3) -> None:
        self.enter, self.exit, self.smooth = enter, exit, smooth
        self.every_frame = False
        self.model_s: Optional[float] = None  # seconds per frame
        self._interval: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._last_index: dict[str, int] = {}

    def _mean(self, old: Optional[float], new: float) -> float:
        return new if old is None else old + self.smooth * (new - old)

    def frame(self, source: str, ts: float, index: Optional[int] = None, stride: int = 1) -> None:
        """A frame of ``source`` at monotonic time ``ts``; ``index`` its position in the source
        (frames read with ``stride`` S are S apart)."""
        last, last_index = self._last.get(source), self._last_index.get(source)
        self._last[source] = ts
        if index is not None:
            self._last_index[source] = index
        if last is not None and ts > last:
            steps = 1 if index is None or last_index is None else max(1, (index - last_index) // max(1, stride))
            self._interval[source] = self._mean(self._interval.get(source), (ts - last) / steps)

    def model(self, seconds: float, frames: int) -> None:
        if frames > 0:
            self.model_s = self._mean(self.model_s, seconds / frames)

    def load(self, now: float) -> Optional[float]:
        rate = sum(1.0 / iv for name, iv in self._interval.items() if now - self._last[name] < ACTIVE_S)
        return None if self.model_s is None or not rate else self.model_s * rate

    def decide(self, now: float) -> bool:
        """True: segment every frame now."""
        load = self.load(now)
        if load is not None:
            if self.every_frame and load > self.exit:
                self.every_frame = False
            elif not self.every_frame and load < self.enter:
                self.every_frame = True
        return self.every_frame


class SourceTracks:
    """One source's objects: the last keyframe's detections, carried to each later frame, with ids."""

    def __init__(self, config: CarryConfig, track: bool) -> None:
        self.carrier = Carrier(config)
        self.tracker = Tracker() if track else None
        self.key: Optional[Detections] = None  # the keyframe's detections (labels, scores, names)
        self.ids: Optional[np.ndarray] = None  # one per keyframe object
        self.masks: list[Optional[np.ndarray]] = []  # per keyframe object on the newest frame; None = dropped
        self._unstarted: Optional[tuple] = None  # an exact frame (image, masks, seq) the carrier has not started from

    def step(self, image: np.ndarray, seq: int) -> tuple[Detections, Optional[np.ndarray]]:
        """The objects carried to frame ``seq`` (the next frame of this source)."""
        self.advance(image, seq)
        return self.carried(image.shape[:2])

    def advance(self, image: np.ndarray, seq: int) -> None:
        """Carry the masks to frame ``seq`` (the next frame) without building its ``Detections``."""
        self._start_carrier()
        self.masks = self.carrier.step(image, frame=seq)

    def matches_carried(self) -> bool:
        """True when a keyframe's objects are matched against carried masks (tracking on and some
        object alive): only then does the keyframe frame itself need the carried masks (one flow)."""
        return self.tracker is not None and self.key is not None and any(m is not None for m in self.masks)

    def keyframe(self, image: np.ndarray, det: Detections, seq: int, max_steps: Optional[int] = None) -> None:
        """Start carrying ``det`` found on frame ``seq`` (the newest frame or an earlier one);
        tracks are matched on the newest frame."""
        self._start_carrier()
        det = _sorted(det)
        masks = det.masks if det.masks is not None else box_masks(det.boxes, image.shape[:2])
        prev = [(m, int(self.key.labels[i]), int(self.ids[i])) for i, m in enumerate(self.masks)
                if m is not None] if self.key is not None and self.ids is not None else []
        self.masks = self.carrier.keyframe(image, list(masks), frame=seq, max_steps=max_steps)
        self.key = det
        if self.tracker is None:
            return
        alive = [i for i, m in enumerate(self.masks) if m is not None]
        ids = np.zeros(len(det), np.int64)
        if alive:
            ids[alive] = self.tracker.match([p[0] for p in prev], [p[1] for p in prev], [p[2] for p in prev],
                                            [self.masks[i] for i in alive], det.labels[alive])
        dead = [i for i, m in enumerate(self.masks) if m is None]
        ids[dead] = self.tracker.new_ids(len(dead))  # never shown (collapsed), but each object has one
        self.ids = ids

    def exact_frame(self, image: np.ndarray, det: Detections, seq: int) -> None:
        """Frame ``seq`` was segmented (every frame is, for now): its objects, with ids matched to
        the previous frame's objects as they were (no flow); the carrier starts from it only when
        a later frame needs carrying."""
        det = _sorted(det)
        masks = list(det.masks if det.masks is not None else box_masks(det.boxes, image.shape[:2]))
        if self.tracker is not None:
            prev = [(m, int(self.key.labels[i]), int(self.ids[i])) for i, m in enumerate(self.masks)
                    if m is not None and m.shape == image.shape[:2]] if self.key is not None and self.ids is not None else []
            self.ids = self.tracker.match([p[0] for p in prev], [p[1] for p in prev], [p[2] for p in prev],
                                          masks, det.labels)
        self.key, self.masks = det, masks
        self._unstarted = (image, masks, seq)

    def _start_carrier(self) -> None:
        unstarted, self._unstarted = self._unstarted, None
        if unstarted is not None:
            image, masks, seq = unstarted
            self.masks = self.carrier.keyframe(image, masks, frame=seq)

    def carried(self, shape: tuple[int, int]) -> tuple[Detections, Optional[np.ndarray]]:
        h, w = shape
        if self.key is None:
            return Detections.empty(size=(w, h)), (np.zeros(0, np.int64) if self.tracker else None)
        keep = [i for i, m in enumerate(self.masks) if m is not None]
        block, boxes = self.carrier.block, self.carrier.boxes
        if keep and block is not None and all(self.masks[i].base is block for i in keep):
            # the carrier's masks are planes of one array, with their boxes: no copy when all live
            masks = block if len(keep) == len(block) else block[keep]
            boxes = boxes if len(keep) == len(block) else boxes[keep]
        else:
            masks = np.stack([self.masks[i] for i in keep]) if keep else np.zeros((0, h, w), bool)
            boxes = mask_boxes(masks)
        det = Detections(boxes=boxes, scores=self.key.scores[keep], labels=self.key.labels[keep],
                         names=self.key.names, masks=masks)
        return det, (self.ids[keep] if self.ids is not None else None)

    def exact(self) -> tuple[Detections, Optional[np.ndarray]]:
        """The keyframe's own detections (on the frame the model saw) with their ids."""
        return self.key, self.ids


def _sorted(det: Detections) -> Detections:
    """Best score first (the model's order; kept so logs list objects the same way on every frame)."""
    order = np.argsort(-det.scores, kind="stable")
    return det if np.array_equal(order, np.arange(len(det))) else det[order]


class KeyframeWorker:
    """Runs the inference stage on requested frames; results are collected per source."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self._cv = threading.Condition()
        self._requests: dict[str, tuple[int, Frame]] = {}
        self._results: dict[str, list[tuple[int, Frame, Optional[Detections]]]] = {}
        self._busy = False
        self._turn = 0
        self.rate = AutoRate()  # the model's time per frame, for ``auto``

    def idle(self) -> bool:
        with self._cv:
            return not self._busy and not self._requests

    def submit(self, source: str, seq: int, frame: Frame) -> None:
        with self._cv:
            self._requests[source] = (seq, frame)  # a newer request replaces one not yet started
            self._cv.notify_all()

    def take(self, source: str) -> list[tuple[int, Frame, Optional[Detections]]]:
        with self._cv:
            return self._results.pop(source, [])

    def wait(self, source: str, seq: int) -> Optional[tuple[int, Frame, Optional[Detections]]]:
        """Block until the result for frame ``seq`` of ``source`` is in (None: the run is stopping)."""
        with self._cv:
            while not self.host.stopping():
                for k, item in enumerate(self._results.get(source, [])):
                    if item[0] == seq:
                        return self._results[source].pop(k)
                self._cv.wait(0.1)
        return None

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _next(self) -> list[tuple[str, int, Frame]]:
        limit = max(1, int(getattr(self.host.stage, "batch_size", 1)))
        with self._cv:
            while not self._requests and not self.host.stopping():
                self._cv.wait(0.1)
            names = sorted(self._requests)
            if not names:
                return []
            start = self._turn % len(names)
            picked = (names[start:] + names[:start])[:limit]
            self._turn += len(picked)
            self._busy = True
            return [(name, *self._requests.pop(name)) for name in picked]

    def run(self) -> None:
        try:
            while not self.host.stopping():
                batch = self._next()
                if not batch:
                    continue
                t0 = time.monotonic()
                outputs = self.host.call_stage([frame for _, _, frame in batch])
                if outputs is not None:
                    self.rate.model(time.monotonic() - t0, len(batch))
                if outputs is None and self.host.stopping():
                    return
                with self._cv:
                    for k, (name, seq, frame) in enumerate(batch):
                        det = None if outputs is None else outputs[k]
                        if det is None and outputs is not None:
                            det = Detections.empty(size=frame.size)
                        self._results.setdefault(name, []).append((seq, frame, det))
                    self._busy = False
                    self._cv.notify_all()
                if outputs is not None:
                    self.host.stats.add_keyframes(len(batch))
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()


class CarryWorker:
    """Takes every frame, asks for keyframes, carries objects, passes results to the writer."""

    def __init__(self, host: Any, keyframes: KeyframeWorker, every: int | str, *, track: bool = True,
                 max_fps: float | None = None, carry: CarryConfig | None = None) -> None:
        self.host = host
        self.keyframes = keyframes
        self.every = every
        self.track = track
        self.min_period = 1.0 / max_fps if max_fps else 0.0
        self.carry = carry or CarryConfig()
        self._sources: dict[str, SourceTracks] = {}
        self._seq: dict[str, int] = {}
        self._last_mono: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}  # live: when each source last delivered a frame
        self._last_submit: dict[str, float] = {}  # live: when each source last got a keyframe
        self._strides: dict[str, int] = {}

    def _every_frame(self, frame: Frame) -> bool:
        """``auto`` on a live source: True while the model keeps up with the frames (``AutoRate``)."""
        rate = self.keyframes.rate
        name, ts = frame.source, frame.mono_ts
        rate.frame(name, ts, frame.index, self._strides.get(name, 1))
        return rate.decide(ts)

    def _auto_due(self, name: str, now: float) -> bool:
        """``auto``: the model is free and it is this source's turn: no other source that delivered
        a frame in the last ACTIVE_S has waited longer for a keyframe (cameras whose frames arrive
        together would otherwise leave every model call to the one read first)."""
        if not self.keyframes.idle():
            return False
        mine = self._last_submit.get(name, float("-inf"))
        return all(mine <= self._last_submit.get(other, float("-inf"))
                   for other, seen in self._last_seen.items() if other != name and now - seen < ACTIVE_S)

    def _tracks(self, frame: Frame, block: bool) -> SourceTracks:
        state = self._sources.get(frame.source)
        if state is None:
            cfg = self.carry if block else CarryConfig(**{**self.carry.__dict__, "history": LIVE_HISTORY})
            state = self._sources[frame.source] = SourceTracks(cfg, self.track)
        return state

    def run(self) -> None:
        host = self.host
        pending = {r.cfg.name: r for r in host.readers}
        blocking = {r.cfg.name: r.cfg.drop == "block" for r in host.readers}
        self._strides = {r.cfg.name: max(1, int(getattr(r.cfg, "stride", 1) or 1)) for r in host.readers}
        while pending and not host.stopping():
            for frame in host.next_frames(pending, limit=1):
                result = self._one(frame, blocking[frame.source])
                if result is not None and not host.emit(frame, result[0], result[1]):
                    return

    def _one(self, frame: Frame, block: bool) -> Optional[tuple[Detections, dict]]:
        name = frame.source
        if not block and self.min_period:
            last = self._last_mono.get(name)
            if last is not None and frame.mono_ts - last < self.min_period * 0.95:
                self.host.stats.add_capped(name)
                return None
            self._last_mono[name] = frame.mono_ts
        seq = self._seq.get(name, 0)
        self._seq[name] = seq + 1
        state = self._tracks(frame, block)
        keyframe = False
        if block:
            if seq % (1 if self.every == AUTO else self.every) != 0:
                det, ids = state.step(frame.image, seq)
            else:
                self.keyframes.submit(name, seq, frame)
                if state.matches_carried():  # tracks are matched on this frame: carry to it (meanwhile)
                    state.advance(frame.image, seq)
                got = self.keyframes.wait(name, seq)
                if got is None:
                    return None
                if got[2] is not None:
                    # The carrier takes the keyframe as a new frame when it was not stepped to it:
                    # the same start (no flow is kept across a keyframe), one flow fewer.
                    state.keyframe(frame.image, got[2], seq)
                    det, ids = state.exact()
                    keyframe = True
                else:  # a failed keyframe (counted, logged): its frame keeps the carried objects
                    if state.carrier.frame != seq:
                        state.advance(frame.image, seq)
                    det, ids = state.carried(frame.image.shape[:2])
        elif self.every == AUTO and self._every_frame(frame):
            # The model keeps up: this frame is segmented and shown with its own objects.
            self._last_seen[name] = frame.mono_ts
            self.keyframes.take(name)  # a result for an older frame is of no use now
            self.keyframes.submit(name, seq, frame)
            self._last_submit[name] = frame.mono_ts
            got = self.keyframes.wait(name, seq)
            if got is None:
                return None
            self.keyframes.take(name)  # nor one that finished meanwhile (started before this frame)
            if got[2] is not None:
                state.exact_frame(frame.image, got[2], seq)
                det, ids = state.exact()
                keyframe = True
            else:  # a failed call (counted, logged): the objects carried to this frame
                det, ids = state.step(frame.image, seq)
        else:
            self._last_seen[name] = frame.mono_ts
            for k, kframe, kdet in self.keyframes.take(name):
                if kdet is not None:
                    state.keyframe(kframe.image, kdet, k, max_steps=LIVE_CATCHUP_STEPS)
            det, ids = state.step(frame.image, seq)
            if (self._auto_due(name, frame.mono_ts) if self.every == AUTO else seq % self.every == 0):
                self.keyframes.submit(name, seq, frame)
                self._last_submit[name] = frame.mono_ts
                keyframe = True
        extras: dict[str, Any] = {"keyframe": keyframe}
        if ids is not None:
            extras["track_ids"] = ids
        return det, extras
