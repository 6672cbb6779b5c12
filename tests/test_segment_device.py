"""The segmenter's GPU path (device paste, one copy per batch, device preprocessing, prefetch), run
on CPU tensors: the same code as on a GPU, checked against the host path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from streamcap.segment import Segmenter, SegmenterConfig, category_names, paste_masks, paste_masks_torch
from streamcap.types import Frame

NAMES = category_names("v1")
PERSON, CAR, DOG = NAMES.index("person"), NAMES.index("car"), NAMES.index("dog")


def _cases(seed: int, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-level mask probabilities (0.15 / 0.9: no interpolated pixel lands near 0.5 by accident)
    and boxes of every kind: inside, clipped at the borders, partly and wholly outside, tiny."""
    rng = np.random.default_rng(seed)
    probs = np.where(rng.random((n, 28, 28)) > 0.5, 0.9, 0.15).astype(np.float32)
    x0, y0 = rng.uniform(-0.2 * w, w, n), rng.uniform(-0.2 * h, h, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, 0.7 * w, n), y0 + rng.uniform(0, 0.7 * h, n)], 1)
    boxes[0] = (w - 1.5, h - 1.5, w + 3.0, h + 3.0)  # a corner sliver
    boxes[1] = (3.2, 4.7, 3.4, 4.9)  # smaller than a pixel
    return probs, boxes.astype(np.float32)


def _far_from_threshold(probs: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]) -> bool:
    """No pasted value lies within 1e-5 of 0.5 (float32 rounding of a bilinear sum of values <= 1 is
    under 1e-6), so any floating-point path gives the same bool mask."""
    return np.array_equal(paste_masks(probs, boxes, hw, 0.49999), paste_masks(probs, boxes, hw, 0.50001))


@pytest.mark.parametrize("seed,hw", [(0, (120, 160)), (1, (97, 211)), (2, (240, 136))])
def test_device_paste_gives_the_host_paste_masks_exactly(seed, hw):
    probs, boxes = _cases(seed, 16, *hw)
    assert _far_from_threshold(probs, boxes, hw)
    host = paste_masks(probs, boxes, hw, 0.5)
    for chunk in (1 << 26, 3 * hw[0] * hw[1]):  # all at once, and 3 detections at a time
        dev = paste_masks_torch(torch.from_numpy(probs), torch.from_numpy(boxes), hw, 0.5, chunk_pixels=chunk)
        assert dev.dtype == torch.bool and dev.shape == (16, *hw)
        assert np.array_equal(dev.numpy(), host)
    assert host[2:].any()  # the cases paste something


def test_device_paste_equals_torchvision_paste_masks_in_image():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    hw = (120, 160)
    probs, boxes = _cases(3, 12, *hw)
    boxes = boxes.clip(0, [hw[1] - 1, hw[0] - 1] * 2).astype(np.float32)  # the model clips its boxes
    assert _far_from_threshold(probs, boxes, hw)
    ref = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), hw)[:, 0] > 0.5
    mine = paste_masks_torch(torch.from_numpy(probs), torch.from_numpy(boxes), hw, 0.5)
    assert torch.equal(mine, ref)


def test_device_paste_with_no_detections():
    out = paste_masks_torch(torch.zeros(0, 28, 28), torch.zeros(0, 4), (30, 40))
    assert out.shape == (0, 30, 40) and out.dtype == torch.bool


class StubModel:
    """Fixed detections (in model-input pixels), varied by the image's first pixel, on its device."""

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for im in images:
            self.inputs.append(tuple(im.shape))
            k = int(round(float(im[0, 0, 0]) * 255)) % 3
            masks = torch.full((4, 1, 28, 28), 0.15)
            masks[:, :, 4:24, 6 + k:22] = 0.9
            out.append({
                "boxes": torch.tensor([[10, 10, 50, 30], [60, 20, 90, 80], [0, 0, 20, 20], [100 - k, 50, 180, 90]],
                                      dtype=torch.float32),
                "scores": torch.tensor([0.9, 0.6, 0.3, 0.1]),
                "labels": torch.tensor([PERSON, CAR, PERSON, DOG]),
                "masks": masks,
            })
        return out


def _frame(image: np.ndarray, index: int) -> Frame:
    return Frame(source="cam", index=index, pts_s=index / 10, wall_ts=0.0, image=image)


def _pair(**cfg) -> tuple[Segmenter, Segmenter]:
    config = SegmenterConfig(**{"weights": "random", "seg_size": 100, "batch": 3, "score_threshold": 0.2, **cfg})
    host, dev = Segmenter(config, StubModel()), Segmenter(config, StubModel())
    dev._device_paste = True  # the GPU's post-processing, on CPU tensors
    return host, dev


@pytest.mark.parametrize("cfg", [{}, {"classes": ("person", "dog"), "score_threshold": 0.0},
                                 {"draw_size": (100, 50)}, {"max_detections": 1}, {"masks": False}])
def test_device_postprocess_gives_the_host_results(cfg):
    host, dev = _pair(**cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (200, 300, 3), np.uint8), rng.integers(0, 255, (150, 120, 3), np.uint8),
              rng.integers(0, 255, (200, 300, 3), np.uint8)]  # one batch, two frame sizes
    a, b = host.segment_images(images), dev.segment_images(images)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert len(x) and np.array_equal(x.boxes, y.boxes) and np.array_equal(x.scores, y.scores)
        assert np.array_equal(x.labels, y.labels) and x.labels.dtype == y.labels.dtype == np.int64
        assert x.boxes.dtype == y.boxes.dtype == np.float32 and y.scores.dtype == np.float32
        if cfg.get("masks", True):
            assert y.masks.dtype == bool and np.array_equal(x.masks, y.masks) and y.masks.any()
        else:
            assert y.masks is None
    assert dev.timings["counts"] == host.timings["counts"]


def test_device_preprocess_matches_the_host_input():
    host, dev = _pair()
    dev._device_preprocess = True
    rng = np.random.default_rng(1)
    same = rng.integers(0, 255, (100, 150, 3), np.uint8)  # already at the model size: no resize
    resized = rng.integers(0, 255, (200, 300, 3), np.uint8)
    assert torch.equal(host._preprocess(same), dev._preprocess(same))
    a, b = host._preprocess(resized), dev._preprocess(resized)
    assert a.shape == b.shape == (3, 100, 150)
    # OpenCV resizes the uint8 frame (rounding to whole grey levels), the device the float one.
    assert float((a - b).abs().max()) <= 2 / 255


def test_prefetched_frames_are_used_by_the_call():
    seg, _ = _pair()
    seg._preprocess = _counting(seg._preprocess)
    frames = [_frame(np.zeros((200, 300, 3), np.uint8), i) for i in range(3)]
    seg.prefetch(frames)
    assert seg._preprocess.calls == 3
    out = seg(frames)
    assert len(out) == 3 and seg._preprocess.calls == 3 and not seg._prepared  # nothing prepared twice
    seg(frames)  # not prefetched: prepared in the call
    assert seg._preprocess.calls == 6


def _counting(fn):
    def wrapped(*a, **k):
        wrapped.calls += 1
        return fn(*a, **k)
    wrapped.calls = 0
    return wrapped


def test_overlap_pipeline_gives_the_same_results(tmp_path):
    # The inference worker with a feeder thread (a GPU segmenter's ``overlap``) writes the same
    # frames and detections as without it.
    import cv2

    from streamcap.runner import run

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(2)
    for _ in range(9):
        writer.write(rng.integers(0, 255, (120, 160, 3), np.uint8))
    writer.release()
    results = []
    for overlap in (False, True):
        _, seg = _pair()
        seg.overlap = overlap
        seg._preprocess = _counting(seg._preprocess)
        seg.prefetch = _counting(seg.prefetch)
        seen = []
        summary = run(str(video), caption=False, stage=seg, on_result=seen.append)
        assert summary.exit_code == 0 and summary.written == 9
        # every batch was prepared ahead by the feeder (when on), and no frame twice
        assert seg.prefetch.calls == (seg.timings["counts"]["batches"] if overlap else 0)
        assert seg._preprocess.calls == 9 and not seg._prepared
        results.append([(r.frame.index, r.detections.boxes.tolist(), r.detections.masks.tobytes(),
                         list(r.extras["track_ids"])) for r in seen])
    assert results[0] == results[1]


def test_segmenter_on_cpu_keeps_the_host_path():
    seg = Segmenter(replace(SegmenterConfig(weights="random")), StubModel(), device="cpu")
    assert not (seg._device_paste or seg._device_preprocess or seg.overlap)


def test_a_prepared_input_is_used_only_for_the_same_frame():
    seen = []

    class Recording(StubModel):
        def __call__(self, images):
            seen.extend(float(im.mean()) for im in images)
            return super().__call__(images)

    seg = Segmenter(SegmenterConfig(weights="random", seg_size=100), Recording())
    old = _frame(np.zeros((200, 300, 3), np.uint8), 0)
    seg.prefetch([old])  # e.g. a run stopped before calling for it
    new = _frame(np.full((200, 300, 3), 255, np.uint8), 0)  # same source and index, another picture
    seg([new])
    assert seen == [1.0] and not seg._prepared  # the model saw the new picture


def test_staging_copies_only_set_pixels_and_gives_back_equal_masks():
    """Masks go to the host as their bounding boxes of set pixels: empty masks, masks touching the
    frame's edges and single pixels come back bit for bit."""
    from streamcap.segment import _HostStaging

    g = torch.Generator().manual_seed(3)
    a = torch.zeros((4, 37, 53), dtype=torch.bool)
    a[0, 5:20, 7:30] = torch.rand((15, 23), generator=g) > 0.3
    a[1, 0, 0] = True
    a[1, 36, 52] = True  # opposite corners: the whole frame is its box
    a[3, 36, 10:12] = True  # a[2] stays empty
    b = torch.rand((2, 9, 11), generator=g) > 0.5
    empty = torch.zeros((0, 9, 11), dtype=torch.bool)
    staging = _HostStaging()
    for _ in range(2):  # the staging is reused across batches
        out = staging.masks_to_host([a, empty, b])
        assert [o.shape for o in out] == [(4, 37, 53), (0, 9, 11), (2, 9, 11)]
        assert all(o.dtype == bool for o in out)
        assert np.array_equal(out[0], a.numpy()) and np.array_equal(out[2], b.numpy())
