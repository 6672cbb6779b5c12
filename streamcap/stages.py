"""The small protocols that model stages implement, so the pipeline never imports a model.

An inference stage takes a batch of frames and returns one result per frame, in order.
A caption stage takes one frame and returns what the model said. Both are called from a
single worker thread; neither needs to be thread-safe.

Optional attributes an inference stage may have, read with ``getattr``:
``random_weights`` (True: the pipeline marks every frame "untrained segmenter") and
``run_scope()`` (a context manager the pipeline holds for the whole run, entered before any
worker starts: the place for process-wide settings such as torch's thread count, which must
not change while another worker runs).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from streamcap.types import Detections, Frame


@runtime_checkable
class InferenceStage(Protocol):
    """Runs on every processed frame (the segmenter, or a no-op)."""

    name: str
    batch_size: int

    def __call__(self, frames: Sequence[Frame]) -> list[Detections | None]:
        """One entry per input frame, in the same order."""
        ...


@runtime_checkable
class CaptionStage(Protocol):
    """Runs every N frames / T seconds on the newest processed frame."""

    name: str

    def __call__(self, frame: Frame) -> tuple[str, float]:
        """(raw caption text, score) for one frame."""
        ...


class NoOpStage:
    """An inference stage that finds nothing: the engine's own cost, for tests and benchmarks."""

    name = "noop"

    def __init__(self, batch_size: int = 1) -> None:
        self.batch_size = batch_size

    def __call__(self, frames: Sequence[Frame]) -> list[Detections | None]:
        return [None for _ in frames]
