"""Per-word attention heatmaps over the image, as one PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from streamcap.errors import BadInputError


def attention_grid(image_rgb: np.ndarray, words: Sequence[str], alphas: np.ndarray,
                   tile: int = 224, cols: int = 5, blend: float = 0.55) -> np.ndarray:
    """RGB uint8 grid: the image, then one tile per word with its attention (h, w) overlaid."""
    base = cv2.resize(np.ascontiguousarray(image_rgb), (tile, tile), interpolation=cv2.INTER_AREA)
    tiles = [_label(base.copy(), "image")]
    for word, alpha in zip(words, alphas):
        a = cv2.resize(alpha.astype(np.float32), (tile, tile), interpolation=cv2.INTER_CUBIC)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-8)  # (tile, tile) in [0, 1]
        heat = cv2.applyColorMap((a * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]  # RGB
        tiles.append(_label(cv2.addWeighted(base, 1 - blend, heat, blend, 0), word))
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    return grid


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 24), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def save_attention_map(path: str | Path, image_rgb: np.ndarray, words: Sequence[str],
                       alphas: np.ndarray | None) -> Path:
    """Write the grid as PNG; BadInputError when the model has no attention or the path fails."""
    path = Path(path)
    if alphas is None:
        raise BadInputError("this caption model has no attention (Show-and-Tell); no attention map to draw")
    grid = attention_grid(image_rgb, words, alphas)
    if path.parent and not path.parent.is_dir():
        raise BadInputError(f"cannot write attention map {path}: folder {path.parent} does not exist")
    if not cv2.imwrite(str(path), grid[:, :, ::-1]):
        raise BadInputError(f"cannot write attention map {path} (unwritable, or not a .png/.jpg name)")
    return path
