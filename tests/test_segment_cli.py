"""`streamcap segment` end to end with random weights, input expansion, and the Python API."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import MEDIA
from typer.testing import CliRunner

from streamcap import api
from streamcap.cli import app
from streamcap.cli.common import expand_images
from streamcap.errors import BadInputError

DOG = str(MEDIA / "dog.jpg")
FAST = ["--seg-weights", "random", "--seg-size", "64", "--max-detections", "3", "--score-threshold", "0.2"]


def test_segment_json_and_out(tmp_path):
    out_dir = tmp_path / "annotated" / "deep"
    result = CliRunner().invoke(app, ["segment", DOG, "--json", "--out", str(out_dir), *FAST])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["path"] == DOG and rec["size"] == [768, 576]
    assert 1 <= len(rec["objects"]) <= 3
    for obj in rec["objects"]:
        assert set(obj) == {"label", "score", "box"} and len(obj["box"]) == 4
        assert all(isinstance(v, int) for v in obj["box"])
    drawn = cv2.imread(str(out_dir / "dog.jpg"))
    assert drawn is not None and drawn.shape == (576, 768, 3)
    assert (np.abs(drawn.astype(int) - cv2.imread(DOG).astype(int)) > 40).any()  # something was drawn


def test_segment_weights_file_equals_random(tmp_path):
    """A saved state dict loads through --seg-weights and gives the same detections."""
    from streamcap.segment import build_segmenter

    seg = build_segmenter(weights="random", device="cpu")
    path = tmp_path / "random_v1.pth"
    torch.save(seg.model.state_dict(), path)
    runner = CliRunner()
    args = ["segment", DOG, "--json", *FAST[2:]]
    from_random = runner.invoke(app, [*args, "--seg-weights", "random"])
    from_file = runner.invoke(app, [*args, "--seg-weights", str(path)])
    assert from_random.exit_code == 0 and from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout) == json.loads(from_random.stdout)


def test_segment_table_folder_and_unreadable(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(DOG, folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    assert expand_images([str(folder)]) == [folder / "a.jpg"]
    assert expand_images([str(folder / "*.jpg")]) == [folder / "a.jpg"]
    with pytest.raises(BadInputError):
        expand_images([str(tmp_path / "nothing*.png")])

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(app, ["segment", str(folder / "a.jpg"), str(bad), *FAST])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and str(bad) in result.stderr

    result = CliRunner().invoke(app, ["segment", str(folder), *FAST], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "a.jpg (768x576)" in result.stdout and "score" in result.stdout


def test_segment_help_and_bad_options():
    runner = CliRunner()
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "Examples" in result.output and "--seg-weights" in result.output
    result = runner.invoke(app, ["segment", DOG, "--classes", "person,unicorn", *FAST])
    assert result.exit_code == 2 and "unicorn" in result.output and "person" in result.output
    result = runner.invoke(app, ["segment", DOG, "--seg-model", "v7"])
    assert result.exit_code == 2


def test_api_segment_image_and_draw():
    api.clear_segmenter_cache()
    opts = dict(weights="random", seg_size=64, score_threshold=0.2, max_detections=3, device="cpu")
    image = cv2.imread(DOG)
    det = api.segment_image(DOG, **opts)
    assert det.masks.shape == (len(det), 576, 768) and len(det) > 0
    assert api.get_segmenter(**opts) is api.get_segmenter(**opts)  # built once per config
    again = api.segment_image(image[:, :, ::-1].copy()[:, :, ::-1], **opts)  # an array works too
    np.testing.assert_allclose(again.boxes, det.boxes, atol=1e-3)
    out = api.draw_detections(image, det, show_boxes=False, show_labels=False)
    np.testing.assert_array_equal((out != image).any(axis=2), det.masks.any(axis=0) & (out != image).any(axis=2))
    assert (out != image).any(axis=2)[det.masks.any(axis=0)].mean() > 0.9
    with pytest.raises(BadInputError):
        api.segment_image("/nonexistent.jpg", **opts)
    api.clear_segmenter_cache()
