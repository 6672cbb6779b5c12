"""COCO RLE in pure numpy (checked against strings pycocotools wrote) and the JSONL summary."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.rle import counts_to_mask, decode, detections_summary, encode, mask_to_counts
from streamcap.types import Detections

# (mask rows, pycocotools.mask.encode(np.asfortranarray(mask))["counts"]), pycocotools 2.0.11
PYCOCOTOOLS = [
    ([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 1, 1]], "321O0020N12O"),
    ([[1, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1]], "02110O09"),
    (
        [[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [0] * 6, [0] * 6],
        "223O:01",
    ),
]


@pytest.mark.parametrize("rows,expected", PYCOCOTOOLS)
def test_matches_pycocotools(rows, expected):
    mask = np.array(rows, dtype=bool)
    rle = encode(mask)
    assert rle == {"size": list(mask.shape), "counts": expected}
    np.testing.assert_array_equal(decode(rle), mask)


def test_counts_are_column_major_and_start_with_zeros():
    mask = np.array([[1, 0], [1, 1]], dtype=bool)  # column-major: 1, 1, 0, 1
    assert mask_to_counts(mask) == [0, 2, 1, 1]
    assert mask_to_counts(np.zeros((2, 3), bool)) == [6]
    np.testing.assert_array_equal(counts_to_mask([0, 2, 1, 1], [2, 2]), mask)
    np.testing.assert_array_equal(decode({"size": [2, 2], "counts": [0, 2, 1, 1]}), mask)  # list form
    with pytest.raises(ValueError):
        counts_to_mask([1, 2], [2, 2])


def test_round_trip_random_and_edge_masks():
    rng = np.random.default_rng(0)
    masks = [rng.random((h, w)) < p for h, w, p in [(1, 1, 0.5), (7, 13, 0.3), (64, 48, 0.9), (120, 160, 0.02)]]
    big = np.zeros((300, 400), bool)
    big[50:250, 20:390] = True  # long runs need multi-byte counts and negative differences
    masks += [np.zeros((5, 4), bool), np.ones((5, 4), bool), big]
    for m in masks:
        rle = encode(m)
        assert isinstance(rle["counts"], str) and rle["size"] == list(m.shape)
        out = decode(rle)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, m)


def test_detections_summary():
    masks = np.zeros((2, 4, 5), bool)
    masks[0, 1:3, 1:4] = True
    det = Detections(
        boxes=np.array([[1.4, 2.6, 10.2, 20.5], [0, 0, 3, 3]], np.float32),
        scores=np.array([0.91234, 0.5], np.float32),
        labels=np.array([1, 1]),
        names=["__background__", "person"],
        masks=masks,
    )
    s = detections_summary(det)
    assert s == {
        "count": 2,
        "counts": {"person": 2},
        "objects": [
            {"label": "person", "score": 0.912, "box": [1, 3, 10, 20]},
            {"label": "person", "score": 0.5, "box": [0, 0, 3, 3]},
        ],
    }
    s = detections_summary(det, objects=False, masks_rle=True)
    assert "objects" not in s and len(s["masks_rle"]) == 2
    np.testing.assert_array_equal(decode(s["masks_rle"][0]), masks[0])
    assert detections_summary(None) == {"count": 0, "counts": {}, "objects": []}
