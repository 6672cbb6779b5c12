"""Every worker's failure reaches the summary, the log and the exit code, and a stop request
ends the run within the stop grace whatever a callback or the encoder does (fake stages)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import streamcap.capture as capture
from conftest import SlowStage, probe_frames, read_jsonl, write_video
from streamcap.capture import SourceConfig
from streamcap.caption.smoothing import CaptionSchedule
from streamcap.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_STAGE_FAILED
from streamcap.pipeline import Pipeline, PipelineConfig
from streamcap.segment import Segmenter, SegmenterConfig
from streamcap.sinks import JsonlSink, VideoFileSink
from streamcap.types import Frame


def _live_file(path, **kw):
    """A file played at its own pace with the live drop policy: the live code paths, offline."""
    return SourceConfig(str(path), kind="file", realtime=True, drop="latest", queue_size=1, **kw)


def _stage_errors(records):
    return [r for r in records if r["event"] == "stage_error"]


def test_a_live_reader_that_raises_ends_the_run_with_its_error(tmp_path, monkeypatch):
    def broken_reader(self):
        raise RuntimeError("decoder exploded")  # a bug in the live reader's loop

    monkeypatch.setattr(capture.SourceReader, "_run_live", broken_reader)
    log = tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        summary = Pipeline([SourceConfig("rtsp://127.0.0.1:9/cam", name="cam")], SlowStage(0.0),
                           log_sink=sink).run()
    assert summary.exit_code == EXIT_STAGE_FAILED and summary.reason == "error"
    assert "decoder exploded" in summary.error and summary.stage_errors == 1
    assert summary.sources["cam"]["status"] == "failed"
    records = read_jsonl(log)
    assert [(r["stage"], r["source"]) for r in _stage_errors(records)] == [("reader cam", "cam")]
    assert any(r["event"] == "source_status" and r["status"] == "failed" for r in records)
    end = records[-1]
    assert end["event"] == "end" and end["exit_code"] == EXIT_STAGE_FAILED and "decoder exploded" in end["error"]


class LevelCaptioner:
    name = "level"

    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s
        self.calls = []

    def __call__(self, frame):
        time.sleep(self.delay_s)
        self.calls.append(frame.index)
        return f"frame {frame.index}", -1.0


class BrokenSmoother:
    def update(self, raw, score, t):
        raise ValueError("smoother bug")


def test_an_exception_in_the_live_caption_worker_ends_the_run_with_its_error(tmp_path):
    src = write_video(tmp_path / "in.avi", n=40, fps=20)
    log = tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        summary = Pipeline([_live_file(src)], SlowStage(0.0), captioner=LevelCaptioner(),
                           smoother_factory=BrokenSmoother, log_sink=sink).run()
    assert summary.exit_code == EXIT_STAGE_FAILED and summary.reason == "error"
    assert "ValueError: smoother bug" in summary.error and summary.captions == 0
    records = read_jsonl(log)
    assert [r["stage"] for r in _stage_errors(records)] == ["caption"]
    assert records[-1]["event"] == "end" and "smoother bug" in records[-1]["error"]


class RecordingSchedule(CaptionSchedule):
    """The pipeline's schedule, recording the frames it let through."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fired = []

    def due(self, frame_index, t_s):
        fire = super().due(frame_index, t_s)
        if fire:
            self.fired.append(frame_index)
        return fire


def test_live_caption_worker_takes_the_newest_frame_and_the_schedule_counts_only_captioned_ones(tmp_path):
    schedules = []

    def schedule_factory():
        schedules.append(RecordingSchedule(every_n_frames=2))
        return schedules[-1]

    src = write_video(tmp_path / "in.avi", n=5)
    p = Pipeline([_live_file(src)], SlowStage(0.0), captioner=LevelCaptioner(), schedule_factory=schedule_factory)
    assert not p.captions._caption_sync
    image = np.full((64, 64, 3), 128, np.uint8)
    image[:32] = 0
    name = p.readers[0].cfg.name
    for i in range(5):  # processed while the caption worker was busy: only the newest is kept
        p.captions.offer(Frame(name, i, i / 10, 0.0, image))
    (frame, det), _ = p.captions._next_caption_frame(0)  # the frame and its detections (None here)
    assert frame.index == 4 and det is None
    assert schedules[0].fired == [4]  # the frames passed over are not counted
    for i in (5, 6):
        p.captions.offer(Frame(name, i, i / 10, 0.0, image))
    assert p.captions._next_caption_frame(0)[0][0].index == 6  # 6 - 4 >= 2: due
    p.captions.offer(Frame(name, 7, 0.7, 0.0, image))
    assert p.captions._next_caption_frame(0)[0] is None  # 7 - 6 < 2: not due, and dropped
    assert schedules[0].fired == [4, 6]


def test_live_captions_from_a_slow_model_mark_new_caption_and_keep_the_schedule_honest(tmp_path):
    schedules = []

    def schedule_factory():
        schedules.append(RecordingSchedule(every_n_frames=1))
        return schedules[-1]

    src = write_video(tmp_path / "in.avi", n=30, fps=20)
    cap = LevelCaptioner(delay_s=0.2)  # slower than the frames: most due frames are passed over
    results = []
    summary = Pipeline([_live_file(src)], SlowStage(0.0), captioner=cap, schedule_factory=schedule_factory,
                       on_result=results.append).run()
    assert summary.exit_code == 0 and cap.calls
    assert schedules[0].fired == cap.calls  # the schedule counted exactly the frames captioned
    carried = [r.caption.text if r.caption else None for r in results]
    new = [i for i, r in enumerate(results) if r.new_caption]
    # new_caption marks exactly the frames where the shown caption changed, on this path too.
    assert new == [i for i in range(len(results)) if carried[i] is not None
                   and (i == 0 or carried[i] != carried[i - 1])]
    assert len(new) >= 1


def _fake_maskrcnn(seen):
    def model(tensors):
        seen.append(torch.get_num_threads())
        return [{"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                 "masks": torch.zeros((0, 1, 28, 28))} for _ in tensors]
    return model


def test_segmenter_threads_are_set_once_for_the_run_and_never_change_under_the_caption_worker(tmp_path):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    seg_seen, cap_seen = [], []
    stage = Segmenter(SegmenterConfig(threads=want, seg_size=64, device="cpu"), _fake_maskrcnn(seg_seen))

    class ThreadsCaptioner:
        name = "threads"

        def __call__(self, frame):
            cap_seen.append(torch.get_num_threads())
            time.sleep(0.01)
            return "a scene", -1.0

    src = write_video(tmp_path / "in.avi", n=20, fps=20)
    summary = Pipeline([_live_file(src)], stage, captioner=ThreadsCaptioner()).run()
    assert summary.exit_code == 0 and seg_seen and cap_seen
    assert set(seg_seen) == {want} and set(cap_seen) == {want}
    assert torch.get_num_threads() == before  # restored after the run


def _blocking_on_frame(block_at, release):
    def on_frame(result, image):
        if result.frame.index == block_at:
            release.wait(30)  # a callback that never returns (a full network socket, a deadlock)
    return on_frame


@pytest.mark.parametrize("how", ["sigterm", "keyboard"])
def test_a_writer_stuck_in_on_frame_cannot_hold_a_stop(tmp_path, how):
    src = write_video(tmp_path / "in.avi", n=200)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    release = threading.Event()
    with JsonlSink(log) as sink:
        p = Pipeline([SourceConfig(str(src))], SlowStage(0.0), video=VideoFileSink(out, fps=10), log_sink=sink,
                     on_frame=_blocking_on_frame(5, release), config=PipelineConfig(stop_grace_s=0.5))
        stuck = lambda: p.stats.written == 6 and p.results.full()  # noqa: E731

        def on_tick(pipeline):
            if how == "sigterm" and stuck():
                pipeline.request_stop("sigterm")
            if how == "keyboard" and stuck():
                raise KeyboardInterrupt

        t0 = time.monotonic()
        try:
            summary = p.run(on_tick=on_tick)
        finally:
            took = time.monotonic() - t0
            release.set()
    assert summary.exit_code == (EXIT_SIGTERM if how == "sigterm" else EXIT_SIGINT)
    # Frames 0-5 are in the video (5 was written before its callback blocked), finalized.
    assert summary.written == 6 and probe_frames(out) == 6
    records = read_jsonl(log)
    assert [r["frame_index"] for r in records if r["event"] == "frame"] == list(range(6))
    assert records[-1]["event"] == "end" and records[-1]["written"] == 6
    assert any("writer" in r["stage"] and "abandoned" in r["message"] for r in _stage_errors(records))
    assert took < 30  # ended by the grace, not by the callback's own 30 s timeout
    time.sleep(0.3)  # the abandoned writer, released, writes and calls nothing more
    assert probe_frames(out) == 6 and read_jsonl(log)[-1]["event"] == "end"


class StuckEncoder:
    """A video sink whose encoder blocks inside write; records whether close overlapped a write."""

    encoder = "fake"

    def __init__(self, path, block_at):
        self.path = path
        self.block_at = block_at
        self.release = threading.Event()
        self.in_write = False
        self.writes = 0
        self.closed_during_write = False
        self.closed = False

    def write(self, image, pts_s):
        self.in_write = True
        try:
            if self.writes == self.block_at:
                self.release.wait(30)
            self.writes += 1
        finally:
            self.in_write = False

    def close(self):
        self.closed_during_write |= self.in_write
        self.closed = True

    def mark_partial(self):
        return None


def test_keyboard_interrupt_never_closes_the_video_while_the_writer_is_inside_the_encoder(tmp_path):
    src = write_video(tmp_path / "in.avi", n=100)
    video = StuckEncoder(tmp_path / "out.mp4", block_at=3)
    p = Pipeline([SourceConfig(str(src))], SlowStage(0.0), video=video, config=PipelineConfig(stop_grace_s=0.5))

    def on_tick(pipeline):
        if video.in_write and video.writes == 3:
            raise KeyboardInterrupt

    try:
        summary = p.run(on_tick=on_tick)
        assert not video.closed  # the encoder never returned: not closed under it
    finally:
        video.release.set()
    # The encoder did not return within the grace: the run says the output is not finalized.
    assert summary.exit_code == EXIT_STAGE_FAILED and "encoder" in summary.error
    for _ in range(100):  # once released, the writer itself finalizes the video, after its write
        if video.closed:
            break
        time.sleep(0.05)
    assert video.closed and not video.closed_during_write and video.writes == 4


class FailingCaptioner:
    name = "failing-captioner"

    def __init__(self, fail_on):
        self.fail_on = fail_on

    def __call__(self, frame):
        if frame.index in self.fail_on:
            raise RuntimeError(f"caption model failed on {frame.index}")
        return "a scene", -1.0


@pytest.mark.parametrize("policy,fail_on,code,errors", [
    ("skip", {2, 5}, 0, 2), ("skip", set(range(3, 100)), EXIT_STAGE_FAILED, 5), ("stop", {4}, EXIT_STAGE_FAILED, 1)])
def test_caption_model_errors_follow_the_stage_error_policy(tmp_path, policy, fail_on, code, errors):
    src = write_video(tmp_path / "in.avi", n=20)
    log = tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        summary = Pipeline([SourceConfig(str(src))], SlowStage(0.0), captioner=FailingCaptioner(fail_on),
                           log_sink=sink, config=PipelineConfig(on_stage_error=policy)).run()
    assert summary.exit_code == code and summary.stage_errors == errors
    records = read_jsonl(log)
    assert [r["stage"] for r in _stage_errors(records)] == ["caption"] * errors
    assert records[-1]["event"] == "end" and records[-1]["exit_code"] == code


def test_a_callback_that_raises_ends_the_run_with_its_error(tmp_path):
    src = write_video(tmp_path / "in.avi", n=20)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"

    def on_result(result):
        if result.frame.index == 7:
            raise KeyError("missing")

    with JsonlSink(log) as sink:
        summary = Pipeline([SourceConfig(str(src))], SlowStage(0.0), video=VideoFileSink(out, fps=10),
                           log_sink=sink, on_result=on_result).run()
    assert summary.exit_code == EXIT_STAGE_FAILED and "writer failed: KeyError" in summary.error
    assert summary.output_partial and probe_frames(tmp_path / "out.partial.mp4") == summary.written == 8
    records = read_jsonl(log)
    assert [r["stage"] for r in _stage_errors(records)] == ["writer"]
    assert records[-1]["event"] == "end" and "KeyError" in records[-1]["error"]
