"""``--fine-tune-blocks N``: train the encoder's last N blocks with the decoder, from images.

No feature cache: every step loads the batch's images (squashed to --image-size like
``streamcap.caption.encoder.preprocess``) and runs the encoder. The encoder stays in eval
mode throughout (frozen BatchNorm statistics, no drop-connect); only the last N blocks
receive gradients. Meant for GPUs: on a CPU a step is an order of magnitude slower than
training on cached features.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamcap.errors import BadInputError

_POOL = ThreadPoolExecutor(max_workers=4)  # JPEG decoding releases the GIL


def build_finetune_encoder(name: str, n_blocks: int, device: torch.device):
    from streamcap.caption.encoder import build_encoder

    encoder = build_encoder(name)
    if not 0 < n_blocks <= encoder.num_blocks:
        raise BadInputError(f"--fine-tune-blocks {n_blocks}: {name} has {encoder.num_blocks} blocks")
    return encoder.unfreeze_last(n_blocks).to(device).eval()


def trainable_params(encoder) -> list[torch.nn.Parameter]:
    return [p for p in encoder.parameters() if p.requires_grad]


def load_images(images_dir: Path, names: Sequence[str], size: int,
                flip: Sequence[bool] | None = None) -> torch.Tensor:
    """Image files -> (B, 3, size, size) float in [0, 1], optionally mirrored per image."""
    from streamcap.caption.encoder import preprocess
    from training.features import _load_rgb

    arrays = list(_POOL.map(lambda n: _load_rgb(Path(images_dir) / n), names))
    if flip is not None:
        arrays = [a[:, ::-1] if f else a for a, f in zip(arrays, flip)]
    return preprocess(arrays, size=size)


def encode(encoder, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, C) region features, the layout of the feature cache."""
    return encoder(images).flatten(2).transpose(1, 2)


class OnTheFlyFeatures:
    """Stands in for a cached (N, L, C) array: ``feats[a:b]`` encodes those images now
    (batched, inference mode) with the current, fine-tuned encoder."""

    def __init__(self, encoder, images_dir: Path, names: Sequence[str], size: int,
                 device: torch.device, batch: int = 50):
        self.encoder, self.images_dir, self.names = encoder, images_dir, list(names)
        self.size, self.device, self.batch = size, device, batch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, sl: slice) -> np.ndarray:
        names = self.names[sl]
        out = []
        with torch.inference_mode():
            for s in range(0, len(names), self.batch):
                x = load_images(self.images_dir, names[s:s + self.batch], self.size).to(self.device)
                out.append(encode(self.encoder, x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)
