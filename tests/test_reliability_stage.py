"""A model stage that raises: the documented policy holds (skip the frame and count it; stop
with exit 4 after N consecutive failures, or at the first with on_stage_error=stop), a CUDA
out-of-memory error is handled like any other, and nothing hangs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import probe_frames, write_video
from reliability_helpers import check_complete_log
from streamcap.capture import SourceConfig
from streamcap.errors import EXIT_OK, EXIT_STAGE_FAILED
from streamcap.pipeline import Pipeline, PipelineConfig
from streamcap.runner import Job, run_job
from streamcap.sinks import JsonlSink, VideoFileSink


class FlakyStage:
    """Raises ``error`` on the frames in ``fail_on`` (all frames when None)."""

    name = "flaky"
    batch_size = 1

    def __init__(self, fail_on=None, error=RuntimeError("boom")) -> None:
        self.fail_on = fail_on
        self.error = error
        self.calls = 0

    def __call__(self, frames):
        self.calls += 1
        if self.fail_on is None or any(f.index in self.fail_on for f in frames):
            raise self.error
        return [None for _ in frames]


def _run(tmp_path, stage, n=30, **cfg):
    src = write_video(tmp_path / "in.avi", n=n)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        p = Pipeline([SourceConfig(str(src))], stage, video=VideoFileSink(out, fps=10), log_sink=sink,
                     config=PipelineConfig(**cfg))
        t0 = time.monotonic()
        summary = p.run()
        elapsed = time.monotonic() - t0
    return summary, check_complete_log(log), out, elapsed


def test_skip_policy_counts_failed_frames_and_writes_the_rest(tmp_path):
    bad = {3, 4, 10, 11, 12, 20}
    summary, records, out, _ = _run(tmp_path, FlakyStage(fail_on=bad), max_consecutive_errors=5)
    assert summary.exit_code == EXIT_OK and summary.reason == "eos"
    assert summary.stage_errors == len(bad) and summary.written == 30 - len(bad)
    errors = [r for r in records if r["event"] == "stage_error"]
    assert sorted(r["frame_index"] for r in errors) == sorted(bad)
    assert all(r["message"] == "RuntimeError: boom" and r["stage"] == "flaky" for r in errors)
    assert [r["frame_index"] for r in records if r["event"] == "frame"] == [i for i in range(30) if i not in bad]
    assert records[-1]["stage_errors"] == len(bad)
    assert probe_frames(out) == 30 - len(bad)


def test_cuda_out_of_memory_every_frame_stops_after_n_in_a_row_with_exit_4(tmp_path):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    stage = FlakyStage(fail_on=set(range(5, 1000)), error=oom)
    summary, records, out, elapsed = _run(tmp_path, stage, n=60, max_consecutive_errors=4)
    assert summary.exit_code == EXIT_STAGE_FAILED and summary.reason == "error"
    assert "OutOfMemoryError" in summary.error and "CUDA out of memory" in summary.error
    assert summary.stage_errors == 4 and stage.calls == 5 + 4  # no retry storm after giving up
    assert [r["frame_index"] for r in records if r["event"] == "stage_error"] == [5, 6, 7, 8]
    end = records[-1]
    assert end["exit_code"] == 4 and end["output_partial"] is True
    assert not out.exists() and out.with_name("out.partial.mp4").exists()
    assert probe_frames(out.with_name("out.partial.mp4")) == 5  # the good frames before it
    assert elapsed < 20


def test_stop_policy_stops_at_the_first_failure(tmp_path):
    summary, records, _, _ = _run(tmp_path, FlakyStage(fail_on={7}), on_stage_error="stop")
    assert summary.exit_code == EXIT_STAGE_FAILED and "boom" in summary.error
    assert summary.stage_errors == 1 and summary.written == 7
    assert [r["event"] for r in records].count("stage_error") == 1


def test_failures_that_are_not_consecutive_never_stop_the_run(tmp_path):
    every_other = set(range(0, 40, 2))
    summary, _, _, _ = _run(tmp_path, FlakyStage(fail_on=every_other), n=40, max_consecutive_errors=2)
    assert summary.exit_code == EXIT_OK and summary.stage_errors == 20 and summary.written == 20


def test_a_stage_that_hangs_does_not_hang_the_shutdown(tmp_path):
    release = threading.Event()

    class StuckStage:
        name = "stuck"
        batch_size = 1

        def __call__(self, frames):
            if frames[0].index == 3:
                release.wait(60)  # a model call that never returns (a wedged driver)
            return [None for _ in frames]

    src = write_video(tmp_path / "in.avi", n=30)
    out = tmp_path / "out.mp4"
    p = Pipeline([SourceConfig(str(src))], StuckStage(), video=VideoFileSink(out, fps=10),
                 config=PipelineConfig(stop_grace_s=0.5))
    threading.Timer(1.0, p.request_stop, args=("sigterm",)).start()
    t0 = time.monotonic()
    try:
        summary = p.run()
    finally:
        release.set()
    assert time.monotonic() - t0 < 10
    assert summary.exit_code == 143 and summary.written == 3
    assert probe_frames(out) == 3


@pytest.mark.parametrize("policy,code", [("skip", 0), ("stop", 4)])
def test_run_job_with_a_failing_stage_follows_the_policy(tmp_path, policy, code):
    src = write_video(tmp_path / "in.avi", n=12)
    log = tmp_path / "log.jsonl"
    job = Job(command="file", sources=[SourceConfig(str(src), kind="file")], log=log, progress=False,
              pipeline=PipelineConfig(on_stage_error=policy), segment=None, caption=None)
    summary = run_job(job, install_signals=False, stage=FlakyStage(fail_on={5}))
    assert summary.exit_code == code
    records = check_complete_log(log)
    assert records[-1]["event"] == "end" and records[-1]["exit_code"] == code
    assert [r["frame_index"] for r in records if r["event"] == "stage_error"] == [5]
