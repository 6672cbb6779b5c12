"""Tracking ids: each object keeps one id across keyframes.

At a keyframe the model's new objects are matched to the tracks carried up to the same frame by
mask IoU, one to one, with scipy's ``linear_sum_assignment`` (the Hungarian method: the pairing
with the largest total IoU, so two neighbours never swap ids for a greedy first pick). A pair
counts only with the same class and an IoU of at least ``min_iou``; every new object left over
starts a new track; a track the keyframe did not confirm ends. Ids count up from 1 per source
and are never reused.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

MIN_IOU = 0.3
_STEP = 4  # IoU on every 4th row and column: the same pairing at 1/16 of the work


def mask_iou(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """(len(a), len(b)) IoU of boolean HxW masks (subsampled every 4th pixel each way)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    fa = np.stack([np.asarray(m)[::_STEP, ::_STEP].ravel() for m in a]).astype(np.float32)
    fb = np.stack([np.asarray(m)[::_STEP, ::_STEP].ravel() for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


class Tracker:
    """Hands out track ids for one source; ``match`` is called once per keyframe."""

    def __init__(self, min_iou: float = MIN_IOU) -> None:
        self.min_iou = min_iou
        self._next = 1

    def new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def match(self, prev_masks: Sequence[np.ndarray], prev_labels: Sequence[int], prev_ids: Sequence[int],
              masks: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        """The id of each new object: the id of the track it overlaps best (same class, IoU >=
        min_iou, one to one), else a new id. ``prev_*`` describe the tracks on the same frame."""
        ids = np.zeros(len(masks), np.int64)
        matched = np.zeros(len(masks), bool)
        if len(prev_masks) and len(masks):
            iou = mask_iou(masks, prev_masks)
            same = np.asarray(labels)[:, None] == np.asarray(prev_labels)[None, :]
            iou = np.where(same, iou, 0.0)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.min_iou:
                    ids[r], matched[r] = prev_ids[c], True
        ids[~matched] = self.new_ids(int((~matched).sum()))
        return ids


def box_masks(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled boxes as masks, for a stage that gives boxes only."""
    h, w = shape
    masks = np.zeros((len(boxes), h, w), bool)
    for i, (x1, y1, x2, y2) in enumerate(np.round(np.asarray(boxes)).astype(int)):
        masks[i, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return masks


class DetectionTracker:
    """Ids for the detections of consecutive frames (every frame segmented): matched to the
    previous frame's objects."""

    def __init__(self, min_iou: float = MIN_IOU) -> None:
        self.tracker = Tracker(min_iou)
        self._prev: tuple[list, np.ndarray, np.ndarray] = ([], np.zeros(0, np.int64), np.zeros(0, np.int64))

    def update(self, det, shape: tuple[int, int]) -> np.ndarray:
        """One id per detection of ``det`` (a ``Detections`` on a frame of ``shape`` (h, w)), in its order."""
        masks = list(det.masks) if det.masks is not None else list(box_masks(det.boxes, shape))
        prev_masks, prev_labels, prev_ids = self._prev
        if prev_masks and masks and prev_masks[0].shape != masks[0].shape:
            prev_masks = []  # the frame size changed: nothing to match
        ids = self.tracker.match(prev_masks, prev_labels, prev_ids, masks, det.labels)
        self._prev = (masks, np.asarray(det.labels), ids)
        return ids
