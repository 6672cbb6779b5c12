"""COCO run-length encoding of binary masks, in pure numpy (no pycocotools).

Run lengths are counted in column-major (Fortran) order and always start with a run of
zeros (0 when the first pixel is set), as COCO does. ``encode`` returns the *compact string*
form pycocotools writes (``{"size": [h, w], "counts": "..."}``, ``rleToString``: each count
is stored as the difference to the count two places back, when past the third, in 5-bit
groups with a continuation bit, offset by 48 into printable ASCII). ``decode`` reads both
that form and the uncompressed form (``counts`` a list of ints).

``detections_summary`` turns ``Detections`` into the JSON-ready dict the JSONL log writes.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from streamcap.types import Detections


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO run lengths of a 2-D mask (column-major, zeros first)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def counts_to_mask(counts: list[int], size: tuple[int, int] | list[int]) -> np.ndarray:
    """Inverse of ``mask_to_counts``: (h, w) bool mask."""
    h, w = int(size[0]), int(size[1])
    counts_a = np.asarray(counts, dtype=np.int64)
    if counts_a.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts_a.sum())}, expected {h * w} for size {[h, w]}")
    values = (np.arange(len(counts_a)) % 2).astype(bool)  # 0, 1, 0, 1, ...
    flat = np.repeat(values, counts_a)
    return flat.reshape((h, w), order="F")


def counts_to_string(counts: list[int]) -> str:
    """pycocotools' compact string for a list of run lengths (rleToString)."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = int(count)
        if i > 2:
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C for negative values
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(s: str) -> list[int]:
    """Inverse of ``counts_to_string`` (rleFrString)."""
    counts: list[int] = []
    p = 0
    data = s.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO compact RLE of a 2-D bool mask: ``{"size": [h, w], "counts": str}``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts_to_string(mask_to_counts(m))}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """(h, w) bool mask from a COCO RLE, compact string or uncompressed list ``counts``."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = string_to_counts(counts)
    return counts_to_mask(list(counts), rle["size"])


def detections_summary(det: Detections | None, objects: bool = True, masks_rle: bool = False) -> dict[str, Any]:
    """A JSON-ready summary of one frame's detections.

    ``{"count": N, "counts": {class: n}, "objects": [{"label", "score", "box"}, ...],
    "masks_rle": [{"size": [h, w], "counts": "..."}, ...]}``; scores are rounded to 3 decimals,
    boxes are integer ``[x1, y1, x2, y2]`` frame pixels (rounded), best score first as given.
    ``objects`` only when asked (default yes); ``masks_rle`` only when asked and masks exist,
    in COCO compact-string RLE (see ``encode``), one per object in the same order.
    """
    if det is None:
        det = Detections.empty()
    out: dict[str, Any] = {"count": len(det), "counts": det.counts()}
    if objects:
        out["objects"] = [
            {
                "label": name,
                "score": round(float(score), 3),
                "box": [int(round(float(v))) for v in box],
            }
            for name, score, box in zip(det.class_names, det.scores, det.boxes)
        ]
    if masks_rle and det.masks is not None:
        out["masks_rle"] = [encode(m) for m in det.masks]
    return out
