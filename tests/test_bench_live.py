"""`streamcap bench --live` runs the real live path on a short clip in CI: the structure of its
report and the clip it makes (no timing is asserted)."""

from __future__ import annotations

import json

import cv2
from typer.testing import CliRunner

from conftest import write_video
from streamcap.bench_live import make_live_clip
from streamcap.cli import app


def test_live_clip_is_24_fps_and_at_least_720x528(tmp_path):
    video = write_video(tmp_path / "tiny.avi", n=5, size=(96, 64))
    made = make_live_clip(video, tmp_path / "clip.mp4", seconds=0.5)
    assert made["frames"] == 12 and made["fps"] == 24.0  # a short input is looped
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    w, h, fps = cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert w >= 720 and h >= 528 and abs(w / h - 96 / 64) < 0.02 and round(fps) == 24
    assert made["size"] == [int(w), int(h)]


def test_bench_live_reports_both_arms(tmp_path):
    video = write_video(tmp_path / "tiny.mp4", n=12, size=(96, 64))
    res = CliRunner().invoke(app, ["bench", "--video", str(video), "--no-engine", "--live", "--live-seconds", "1",
                                   "--seg-size", "64", "--repeats", "1", "--warmup", "0", "--json"])
    assert res.exit_code == 0, res.output
    live = json.loads(res.stdout)["live"]
    assert live["random_weights"] is True and live["clip"]["frames"] == 24
    assert [live[a]["seg_every"] for a in ("keyframes", "every_frame")] == ["auto", 1]
    for arm in ("keyframes", "every_frame"):
        a = live[arm]
        assert set(a) == {"seg_every", "frames_read", "written", "written_vs_read", "keyframes_per_s",
                          "latency_median_ms", "latency_p95_ms"}
        assert 0 < a["frames_read"]["median"] <= 24 and a["written"]["median"] <= a["frames_read"]["median"]
        assert len(a["latency_p95_ms"]["runs"]) == 1
