"""`streamcap bench` on a tiny input with an untrained Mask R-CNN and few frames: the structure
of its JSON report (no timing is asserted), which input it used, and the bundled fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import streamcap.bench as bench
from conftest import write_video
from streamcap.cli import app

runner = CliRunner()


def _check_spread(s: dict, repeats: int) -> None:
    assert set(s) == {"median", "min", "max", "runs"}
    assert len(s["runs"]) == repeats and all(v > 0 for v in s["runs"])
    assert s["min"] <= s["median"] <= s["max"]


def test_bench_json_reports_equal_work_with_repeats_and_spread(tmp_path):
    video = write_video(tmp_path / "tiny.mp4", n=12, size=(96, 64))
    res = runner.invoke(app, ["bench", "--video", str(video), "--json", "--no-rss", "--repeats", "2",
                              "--warmup", "1", "--seg-weights", "random", "--seg-size", "64",
                              "--seg-frames", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["input"] == {"path": str(video), "origin": "given", "size": [96, 64], "fps": 10.0}
    assert (report["repeats"], report["warmup"]) == (2, 1)
    eng = report["engine"]
    for key in ("decode", "decode_encode", "file"):
        assert eng[key]["frames"] == 12, key  # every arm reads the whole input
        _check_spread(eng[key]["fps"], 2)
    assert eng["file"]["encoder"] == eng["decode_encode"]["encoder"]  # the same encoder
    assert "--log" in eng["file"]["command"]  # the real command's work: renderer and log
    _check_spread(eng["file_vs_decode_encode"], 2)
    assert "peak_rss_kib" not in eng
    seg = report["segment"]
    assert seg["random_weights"] is True and seg["frames"] == 3 and seg["batch"] == 1
    assert seg["frame_size"] == [96, 64]
    assert set(seg["per_frame_ms"]) == {"decode", "preprocess", "model", "mask_paste", "draw", "encode"}
    assert seg["per_frame_ms"]["model"] > 0
    for key in ("model_only_fps", "file_fps", "file_vs_model_only"):
        _check_spread(seg[key], 2)
    # each ratio pairs the runs of one repeat
    ratios = [f / m for f, m in zip(seg["file_fps"]["runs"], seg["model_only_fps"]["runs"])]
    assert seg["file_vs_model_only"]["runs"] == pytest.approx(ratios, rel=0.02, abs=0.002)


def test_bench_without_shared_media_uses_the_bundled_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SHARED_VIDEO", tmp_path / "nowhere" / "vtest.avi")
    res = runner.invoke(app, ["bench", "--no-engine", "--json", "--repeats", "1", "--warmup", "0",
                              "--seg-weights", "random", "--seg-size", "64", "--seg-frames", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["input"]["origin"] == "bundled"
    assert Path(report["input"]["path"]) == bench.BUNDLED_VIDEO
    assert "bundled" in res.stderr and "vtest_8s.mp4" in res.stderr


def test_resolve_input_order_and_missing_video(tmp_path):
    shared, bundled = tmp_path / "shared.avi", tmp_path / "bundled.mp4"
    bundled.write_bytes(b"x")
    assert bench.resolve_input(None, shared, bundled) == (bundled, "bundled")
    shared.write_bytes(b"x")
    assert bench.resolve_input(None, shared, bundled) == (shared, "shared")
    assert bench.resolve_input(bundled, shared, bundled) == (bundled, "given")
    with pytest.raises(bench.BadInputError, match="video not found"):
        bench.resolve_input(tmp_path / "missing.mp4", shared, bundled)
    res = runner.invoke(app, ["bench", "--video", str(tmp_path / "missing.mp4")])
    assert res.exit_code == 2 and "video not found" in res.stderr
