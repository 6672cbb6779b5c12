"""The CPU-side records that travel between pipeline stages.

Tensors never appear here: model modules convert with ``.cpu().numpy()`` at their edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded frame.

    ``image`` is a BGR ``uint8`` array (H, W, 3) exactly as OpenCV gives it.
    ``index`` counts frames read from the source (after stride), starting at 0.
    ``pts_s`` is the stream timestamp in seconds (container PTS, or index / fps).
    ``wall_ts`` is ``time.time()`` when the reader got the frame.
    """

    source: str
    index: int
    pts_s: float
    wall_ts: float
    image: np.ndarray
    mono_ts: float = 0.0  # time.monotonic() at read, for latency measurement

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        h, w = self.image.shape[:2]
        return w, h


@dataclass(slots=True)
class Detections:
    """Instances found in one frame, as numpy arrays of equal length N.

    boxes  (N, 4) float32 xyxy in frame pixels
    masks  (N, H, W) bool, or None when the model gives no masks
    scores (N,) float32
    labels (N,) int64 class ids of the model's category list
    names  the model's category list, shared (index with labels)

    Filter by index, as supervision and detectron2 do: ``det[det.scores > 0.5]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: Sequence[str] = ()
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if len(self.boxes) != n or len(self.labels) != n:
            raise ValueError("boxes, scores and labels must have the same length")
        if self.masks is not None and len(self.masks) != n:
            raise ValueError("masks must have one entry per detection")

    @classmethod
    def empty(cls, names: Sequence[str] = (), size: tuple[int, int] | None = None) -> "Detections":
        """No detections; ``size`` (w, h) gives an empty mask stack of the right shape."""
        masks = None if size is None else np.zeros((0, size[1], size[0]), dtype=bool)
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            labels=np.zeros((0,), np.int64),
            names=names,
            masks=masks,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> "Detections":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            names=self.names,
            masks=None if self.masks is None else self.masks[index],
        )

    @property
    def class_names(self) -> list[str]:
        """The name of each detection's class."""
        return [self.names[i] if 0 <= i < len(self.names) else str(int(i)) for i in self.labels]

    def counts(self) -> dict[str, int]:
        """Number of detections per class name."""
        out: dict[str, int] = {}
        for name in self.class_names:
            out[name] = out.get(name, 0) + 1
        return out


@dataclass(slots=True)
class Caption:
    """A scene sentence: ``text`` is what is shown, ``raw_text`` what the model said."""

    text: str
    raw_text: str
    score: float
    frame_index: int
    changed: bool = False  # the shown text changed with this caption


@dataclass(slots=True)
class FrameResult:
    """What render and sinks receive for one frame."""

    frame: Frame
    detections: Detections | None = None
    caption: Caption | None = None  # the caption shown on this frame (the latest one)
    new_caption: bool = False  # the shown caption changed: the first frame that carries the new text
    extras: dict[str, Any] = field(default_factory=dict)
