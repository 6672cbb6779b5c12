"""``python -m training.speed``: one row per model and decoding method, the same words as
``Captioner`` gives, torch threads restored; a bad model path is a one-line error (exit 2)."""

from __future__ import annotations

import json

import torch
from conftest import MEDIA, REPO

from streamcap.caption.api import Captioner

ASSET = REPO / "streamcap" / "assets" / "caption_flickr8k_lite0.pt"


def test_speed_reports_each_model_and_method(capsys):
    from training.speed import main

    old = torch.get_num_threads()
    assert main(["--model", str(ASSET), "--image", str(MEDIA / "dog.jpg"), "--runs", "1", "--json"]) == 0
    assert torch.get_num_threads() == old
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1
    rows = report["rows"]
    assert [(r["method"], r["encoder"], r["input_size"]) for r in rows] == [
        ("greedy", "efficientnet_lite0", 224), ("beam 3", "efficientnet_lite0", 224)]
    assert all(r["median_ms"] > 0 for r in rows)
    want = Captioner(ASSET, device="cpu", beam=3).caption_images([str(MEDIA / "dog.jpg")])[0].text
    assert rows[1]["caption"] == want


def test_speed_missing_model_is_exit_2(tmp_path, capsys):
    from training.speed import main

    assert main(["--model", str(tmp_path / "none.pt"), "--image", str(MEDIA / "dog.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
