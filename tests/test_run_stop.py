"""run_job's stop hook (``StopHandle``): another thread ends a run as a signal would, whether it
asks before the pipeline exists or while it runs (what a Ray actor does to its camera group)."""

from __future__ import annotations

import threading

from conftest import read_jsonl, write_video

from streamcap.capture import SourceConfig
from streamcap.runner import Job, StopHandle, run_job


def _job(tmp_path, log):
    video = write_video(tmp_path / "clip.mp4", n=200, fps=10.0)  # 20 s played in real time
    src = SourceConfig(str(video), name="cam", kind="file", realtime=True, drop="latest", queue_size=1)
    return Job(command="monitor", sources=[src], log=log, progress=False, index=False)


def test_stop_while_running_ends_the_run_with_that_reason(tmp_path):
    log = tmp_path / "run.jsonl"
    handle = StopHandle()
    seen = threading.Event()
    out = {}

    def go():
        out["summary"] = run_job(_job(tmp_path, log), install_signals=False, stop=handle,
                                 on_record=lambda r: r["event"] == "frame" and seen.set())

    t = threading.Thread(target=go)
    t.start()
    assert seen.wait(30)
    handle.stop("sigint")
    handle.stop("other")  # the first reason wins
    t.join(30)
    assert not t.is_alive()
    assert out["summary"].reason == "sigint"
    records = read_jsonl(log)
    assert records[-1]["event"] == "end" and records[-1]["reason"] == "sigint"
    assert len([r for r in records if r["event"] == "frame"]) < 200


def test_stop_before_the_pipeline_exists(tmp_path):
    log = tmp_path / "run.jsonl"
    handle = StopHandle()
    handle.stop("sigterm")
    summary = run_job(_job(tmp_path, log), install_signals=False, stop=handle)
    assert summary.reason == "sigterm"
    records = read_jsonl(log)
    assert records[-1]["event"] == "end" and records[-1]["reason"] == "sigterm"
