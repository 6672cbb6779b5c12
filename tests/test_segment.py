"""Segmenter: shapes, thresholds, class filters, batching, mask pasting; random-init, small inputs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from streamcap.errors import BadInputError
from streamcap.segment import (
    Segmenter,
    SegmenterConfig,
    build_segmenter,
    category_names,
    input_size,
    paste_masks,
)
from streamcap.stages import InferenceStage
from streamcap.types import Detections, Frame

NAMES = category_names("v1")
PERSON, CAR, DOG = NAMES.index("person"), NAMES.index("car"), NAMES.index("dog")


def _frame(image: np.ndarray, index: int = 0) -> Frame:
    return Frame(source="test", index=index, pts_s=index / 10, wall_ts=0.0, image=image)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth synthetic scene (blobs on a gradient) so the detector has something to see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full((h, w), 90)], -1)
    for _ in range(4):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 30)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def built():
    """One random-init v1 segmenter for the module, and the global RNG state around building it."""
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    seg = build_segmenter(
        weights="random", seg_size=128, score_threshold=0.0, max_detections=8, proposals=50, device="cpu"
    )
    return seg, before, torch.get_rng_state(), threads


@pytest.fixture(scope="module")
def seg(built) -> Segmenter:
    return built[0]


def test_build_changes_nothing_global(built):
    seg, before, after, threads = built
    assert torch.equal(before, after)  # random init ran under a forked RNG
    assert torch.get_num_threads() == threads
    assert seg.random_weights and seg.weights_source == "random"
    assert "RANDOM" in seg.describe()


def test_stage_protocol_shapes_and_dtypes(seg):
    assert isinstance(seg, InferenceStage)
    assert seg.name == "segment" and seg.batch_size == 1 and seg.seg_size == 128
    frames = [_frame(_image(120, 160, 1), 0), _frame(_image(90, 200, 2), 1)]
    seg.reset_timings()
    out = seg(frames)
    assert len(out) == 2
    for det, fr in zip(out, frames):
        h, w = fr.image.shape[:2]
        assert isinstance(det, Detections)
        assert 0 < len(det) <= 8
        assert det.boxes.dtype == np.float32 and det.boxes.shape == (len(det), 4)
        assert det.scores.dtype == np.float32 and det.labels.dtype == np.int64
        assert det.masks is not None and det.masks.dtype == bool and det.masks.shape == (len(det), h, w)
        assert list(det.names) == NAMES
        assert (det.boxes[:, [0, 2]] <= w).all() and (det.boxes[:, [1, 3]] <= h).all() and (det.boxes >= 0).all()
        assert (np.diff(det.scores) <= 0).all()  # best first
    t = seg.timings
    assert set(t) == {"preprocess", "model", "paste", "counts"}
    assert t["counts"]["frames"] == 2 and t["counts"]["batches"] == 2
    assert t["counts"]["detections"] == sum(len(d) for d in out)
    assert t["model"] > 0 and t["preprocess"] >= 0 and t["paste"] >= 0


def test_batched_equals_single(seg):
    images = [_image(120, 160, s) for s in (3, 4)]
    single = [seg.segment_images([im])[0] for im in images]
    batched_seg = Segmenter(replace(seg.config, batch=2), seg.model)
    assert batched_seg.batch_size == 2
    batched = batched_seg.segment_images(images)
    assert batched_seg.timings["counts"]["batches"] == 1
    for a, b in zip(single, batched):
        assert len(a) == len(b)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        assert (a.masks != b.masks).mean() < 1e-3


def test_lower_threshold_gives_superset(seg):
    image = _image(120, 160, 6)
    low = seg.segment_images([image])[0]
    cut = float(np.median(low.scores))
    high = Segmenter(replace(seg.config, score_threshold=cut), seg.model).segment_images([image])[0]
    assert 0 < len(high) <= len(low)
    assert (high.scores >= cut).all()
    for box, label in zip(high.boxes, high.labels):  # every high detection is among the low ones
        assert any(np.allclose(box, b, atol=1e-3) and label == lab for b, lab in zip(low.boxes, low.labels))


def test_real_model_class_filter(seg):
    image = _image(120, 160, 7)
    det = seg.segment_images([image])[0]
    keep = det.class_names[0]
    only = Segmenter(replace(seg.config, classes=(keep,)), seg.model).segment_images([image])[0]
    assert len(only) >= 1 and set(only.class_names) == {keep}


# -- exact post-processing with a stub model ----------------------------------------------------


class StubModel:
    """Returns fixed detections in the model-input pixels; records what it was given."""

    def __init__(self) -> None:
        self.inputs: list[tuple[int, ...]] = []
        self.threads: list[int] = []

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.threads.append(torch.get_num_threads())
        out = []
        for im in images:
            assert im.dtype == torch.float32 and float(im.max()) <= 1.0
            self.inputs.append(tuple(im.shape))
            masks = torch.zeros(4, 1, 28, 28)
            masks[:, :, 4:24, 4:24] = 0.9  # a centred square of high probability
            out.append(
                {
                    "boxes": torch.tensor(
                        [[10, 10, 50, 30], [60, 20, 90, 80], [0, 0, 20, 20], [100, 50, 180, 90]], dtype=torch.float32
                    ),
                    "scores": torch.tensor([0.9, 0.6, 0.3, 0.1]),
                    "labels": torch.tensor([PERSON, CAR, PERSON, DOG]),
                    "masks": masks,
                }
            )
        return out


def _stub_segmenter(**cfg) -> tuple[Segmenter, StubModel]:
    stub = StubModel()
    cfg.setdefault("seg_size", 100)
    return Segmenter(SegmenterConfig(weights="random", **cfg), stub), stub


def test_postprocess_scales_boxes_and_thresholds():
    seg, stub = _stub_segmenter(score_threshold=0.5)
    image = np.zeros((200, 300, 3), np.uint8)  # model sees 100 x 150
    det = seg.segment_images([image])[0]
    assert stub.inputs == [(3, 100, 150)]
    np.testing.assert_allclose(det.scores, [0.9, 0.6])
    assert det.class_names == ["person", "car"]
    np.testing.assert_allclose(det.boxes, [[20, 20, 100, 60], [120, 40, 180, 160]])
    assert det.masks.shape == (2, 200, 300)
    ys, xs = np.nonzero(det.masks[0])  # the mask lies inside its (frame-pixel) box
    assert xs.min() >= 20 and xs.max() <= 101 and ys.min() >= 20 and ys.max() <= 61
    assert 0.4 < det.masks[0].sum() / (80 * 40) < 0.9  # the centred square is ~ (20/28)^2 of the box

    lower, _ = _stub_segmenter(score_threshold=0.2)
    assert lower.segment_images([image])[0].scores.tolist() == pytest.approx([0.9, 0.6, 0.3])


def test_postprocess_class_filter_max_detections_mask_options():
    image = np.zeros((200, 300, 3), np.uint8)
    seg, _ = _stub_segmenter(score_threshold=0.0, classes=("person", "dog"))
    assert seg.segment_images([image])[0].class_names == ["person", "person", "dog"]
    seg, _ = _stub_segmenter(score_threshold=0.0, max_detections=2)
    assert seg.segment_images([image])[0].scores.tolist() == pytest.approx([0.9, 0.6])
    seg, _ = _stub_segmenter(score_threshold=0.5, draw_size=(100, 50))
    det = seg.segment_images([image])[0]
    assert det.masks.shape == (2, 50, 100)
    np.testing.assert_allclose(det.boxes[0], [20, 20, 100, 60])  # boxes stay in frame pixels
    seg, _ = _stub_segmenter(masks=False)
    assert seg.segment_images([image])[0].masks is None
    seg, _ = _stub_segmenter(mask_threshold=0.95)  # no pixel reaches 0.95
    assert not seg.segment_images([image])[0].masks.any()
    seg, _ = _stub_segmenter(score_threshold=0.95)
    det = seg.segment_images([image])[0]
    assert len(det) == 0 and det.masks.shape == (0, 200, 300)


def test_threads_set_only_while_running_and_restored():
    before = torch.get_num_threads()
    seg, stub = _stub_segmenter(threads=1)
    assert torch.get_num_threads() == before  # constructing changes nothing
    seg.segment_images([np.zeros((64, 64, 3), np.uint8)])
    assert stub.threads == [1]
    assert torch.get_num_threads() == before


def test_paste_masks_matches_torchvision():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    rng = np.random.default_rng(0)
    n = 12
    probs = rng.random((n, 28, 28)).astype(np.float32)
    x0, y0 = rng.uniform(0, 120, n), rng.uniform(0, 80, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, 90, n), y0 + rng.uniform(1, 90, n)], 1)
    boxes = boxes.clip(0, [159, 119, 159, 119]).astype(np.float32)  # the model clips boxes to the image
    mine = paste_masks(probs, boxes, (120, 160), 0.5)
    ref = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (120, 160))[:, 0] > 0.5
    assert mine.shape == (n, 120, 160) and mine.dtype == bool
    assert (mine != ref.numpy()).sum() <= 0.001 * mine.size


def test_input_size():
    assert input_size(576, 768, 512) == (512, 683)
    assert input_size(100, 1000, 100) == (17, 167)  # long side capped at 100 * 1333 / 800
    assert input_size(123, 456, 0) == (123, 456)
    # The GPU default: the training scale (800) for large frames, smaller frames as they are.
    assert input_size(1080, 1920, 800, upscale=False) == (750, 1333)  # long side capped at 1333
    assert input_size(720, 1280, 800, upscale=False) == (720, 1280)
    assert input_size(720, 1280, 800) == (750, 1333)


def test_gpu_default_seg_size_is_the_training_scale_without_upscaling():
    from streamcap.segment import Segmenter, SegmenterConfig

    gpu = Segmenter(SegmenterConfig(), model=lambda x: x, device="cuda")  # nothing runs on the device
    assert (gpu.seg_size, gpu._upscale, gpu.batch_size) == (800, False, 4)
    cpu = Segmenter(SegmenterConfig(), model=lambda x: x, device="cpu")
    assert (cpu.seg_size, cpu._upscale) == (512, True)
    chosen = Segmenter(SegmenterConfig(seg_size=640), model=lambda x: x, device="cuda")
    assert (chosen.seg_size, chosen._upscale) == (640, True)


def test_config_validation():
    cfg = SegmenterConfig(classes="Person, car")
    assert cfg.classes == ("person", "car")
    assert SegmenterConfig(classes=()).classes is None
    with pytest.raises(BadInputError, match="valid names: .*person"):
        SegmenterConfig(classes=("person", "unicorn"))
    for bad in (
        dict(model="v3"),
        dict(score_threshold=1.5),
        dict(mask_threshold=-0.1),
        dict(device="tpu"),
        dict(seg_size=8),
        dict(max_detections=0),
        dict(batch=0),
    ):
        with pytest.raises(BadInputError):
            SegmenterConfig(**bad)
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="CUDA is not available"):
            build_segmenter(weights="random", device="cuda")


def test_v2_builds_and_runs_with_channels_last():
    seg = build_segmenter(
        model="v2", weights="random", seg_size=64, proposals=20, score_threshold=0.0, max_detections=2,
        channels_last=True, device="cpu",
    )
    det = seg.segment_images([_image(64, 80, 9)])[0]
    assert seg.names == category_names("v2") and 0 < len(det) <= 2
    assert det.masks.shape == (len(det), 64, 80)
