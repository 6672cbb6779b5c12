"""--precision: the autocast dtype the segmenter runs in, chosen by device and CPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from streamcap.errors import BadInputError
from streamcap.segment import SegmenterConfig, build_segmenter, cpu_native_bf16, resolve_precision

from conftest import REPO

SAMPLES = REPO / "samples"


def test_auto_precision_follows_the_device_and_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("auto", cuda, fp16=False) == "fp32"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_native_bf16() else "fp32")
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, cpu) == p and resolve_precision(p, cuda) == p


def test_unknown_precision_is_bad_input():
    with pytest.raises(BadInputError, match="--precision"):
        SegmenterConfig(precision="int8")


def _features(seg, image: np.ndarray) -> torch.Tensor:
    """The FPN's finest level for one frame, through the segmenter's own autocast."""
    t = seg._preprocess(image)
    net = seg.model
    with torch.inference_mode():
        amp = torch.autocast("cpu", dtype=seg._amp_dtype) if seg._amp_dtype is not None else torch.autocast("cpu", enabled=False)
        with amp:
            batch, _ = net.transform([t])
            feats = net.backbone(batch.tensors)
    return feats["0"].float()


def test_bf16_runs_and_its_features_agree_with_fp32_on_a_real_photo():
    image = cv2.imread(str(SAMPLES / "dog.jpg"))
    fp32 = build_segmenter(weights="random", device="cpu", precision="fp32", seg_size=160, max_detections=5)
    bf16 = build_segmenter(weights="random", device="cpu", precision="bf16", seg_size=160, max_detections=5)
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    a, b = _features(fp32, image), _features(bf16, image)
    assert a.shape == b.shape
    # bf16 keeps 8 bits of mantissa: a few tenths of a percent per operation, a few percent
    # through ResNet-50 + FPN. Any correct bf16 path stays well inside 10 %.
    rel = float((a - b).norm() / a.norm())
    assert rel < 0.10, rel
    det = bf16.segment_images([image])[0]  # the whole bf16 path runs to pasted bool masks
    assert det.masks is not None and det.masks.dtype == bool and det.masks.shape[1:] == image.shape[:2]


def test_precision_option_reaches_the_segmenter_and_bad_values_are_one_line_exit_2(tmp_path):
    from conftest import run_cli

    bad = run_cli("file", str(SAMPLES / "vtest_8s.mp4"), "--no-caption", "--seg-weights", "random",
                  "--precision", "int8")
    assert bad.returncode == 2
    assert "--precision" in bad.stderr and "internal error" not in bad.stderr
    log = tmp_path / "run.jsonl"
    ok = run_cli("segment", str(SAMPLES / "dog.jpg"), "--seg-weights", "random", "--seg-size", "96",
                 "--precision", "fp32", "--json")
    assert ok.returncode == 0, ok.stderr
    import json

    run = run_cli("file", str(SAMPLES / "dog.jpg"), "--no-caption", "--seg-weights", "random", "--seg-size", "96",
                  "--precision", "bf16", "--max-detections", "3", "--log", str(log))
    assert run.returncode == 0, run.stderr
    first = json.loads(log.read_text().splitlines()[0])
    assert "precision bf16" in json.dumps(first)
