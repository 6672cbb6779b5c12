"""Scene captions: image encoder, attention LSTM decoder, decoding, smoothing, checkpoints.

``from streamcap.caption import Captioner, caption_image, CaptionSmoother, CaptionSchedule``;
torch is imported lazily, so ``streamcap.caption.smoothing`` stays importable on its own.
"""

from __future__ import annotations

_LAZY = {
    "Captioner": "streamcap.caption.api",
    "CaptionResult": "streamcap.caption.api",
    "caption_image": "streamcap.caption.api",
    "CaptionSmoother": "streamcap.caption.smoothing",
    "CaptionSchedule": "streamcap.caption.smoothing",
    "load_checkpoint": "streamcap.caption.checkpoint",
    "save_checkpoint": "streamcap.caption.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamcap.caption' has no attribute {name!r}")
