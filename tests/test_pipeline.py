from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import SlowStage, frame_level, probe_frames, read_jsonl, write_video
from streamcap.capture import SourceConfig
from streamcap.errors import EXIT_OK, EXIT_STAGE_FAILED
from streamcap.pipeline import Pipeline, PipelineConfig
from streamcap.sinks import JsonlSink, VideoFileSink
from streamcap.types import Frame


def test_file_loses_nothing_and_keeps_order_with_batches(tmp_path):
    path = write_video(tmp_path / "v.avi", n=40)
    stage = SlowStage(delay_s=0.002, batch_size=3)
    seen = []
    p = Pipeline([SourceConfig(str(path), queue_size=2)], stage, on_result=lambda r: seen.append(r))
    summary = p.run()
    assert summary.exit_code == EXIT_OK and summary.reason == "eos"
    assert [r.frame.index for r in seen] == list(range(40))
    assert [frame_level(r.frame.image) for r in seen] == [(i * 10) % 250 for i in range(40)]
    assert summary.dropped == 0 and summary.processed == summary.written == 40


def test_slow_model_on_fast_live_source_keeps_latency_bounded(tmp_path):
    # 100 frames paced at 50 fps (2 s) through a model that takes 0.1 s a frame.
    path = write_video(tmp_path / "v.avi", n=100, fps=50)
    stage = SlowStage(delay_s=0.1)
    depths, latencies = [], []

    def on_result(r):
        latencies.append(time.monotonic() - r.frame.mono_ts)
        depths.append(p.readers[0].queue.qsize())

    cfg = SourceConfig(str(path), kind="file", realtime=True, drop="latest", queue_size=1)
    p = Pipeline([cfg], stage, on_result=on_result)
    summary = p.run()
    assert summary.exit_code == EXIT_OK
    assert summary.dropped > 40  # most frames were stale and dropped
    assert summary.processed < 60
    assert max(depths) <= 1
    # A blocking queue would make the last frames about 8 s old; latest keeps them fresh.
    assert max(latencies) < 1.5


def test_exception_in_stage_stops_promptly_and_finalizes(tmp_path):
    path = write_video(tmp_path / "v.avi", n=60)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    stage = SlowStage(delay_s=0.001, fail_on={25})
    video = VideoFileSink(out, fps=10)
    with JsonlSink(log) as sink:
        p = Pipeline([SourceConfig(str(path))], stage, video=video, log_sink=sink,
                     config=PipelineConfig(on_stage_error="stop"))
        t0 = time.monotonic()
        summary = p.run()
    assert time.monotonic() - t0 < 10
    assert summary.exit_code == EXIT_STAGE_FAILED and "fake failure on frame 25" in summary.error
    # The video cut short by the error is kept, finalized, under a name that says so.
    assert summary.output_partial and summary.output.endswith("out.partial.mp4")
    assert probe_frames(tmp_path / "out.partial.mp4") == 25
    records = read_jsonl(log)
    assert records[-1]["event"] == "end" and records[-1]["exit_code"] == EXIT_STAGE_FAILED
    assert any(r["event"] == "stage_error" and r["frame_index"] == 25 for r in records)
    assert not [t for t in threading.enumerate() if t.name in ("inference", "writer") and t.is_alive()]


def test_skip_policy_counts_failed_frames_and_continues(tmp_path):
    path = write_video(tmp_path / "v.avi", n=20)
    stage = SlowStage(delay_s=0.0, fail_on={3, 9})
    seen = []
    p = Pipeline([SourceConfig(str(path))], stage, on_result=lambda r: seen.append(r.frame.index))
    summary = p.run()
    assert summary.exit_code == EXIT_OK and summary.stage_errors == 2
    assert seen == [i for i in range(20) if i not in (3, 9)]


def test_skip_policy_gives_up_after_consecutive_failures(tmp_path):
    path = write_video(tmp_path / "v.avi", n=30)
    stage = SlowStage(delay_s=0.0, fail_on=set(range(5, 30)))
    summary = Pipeline([SourceConfig(str(path))], stage, config=PipelineConfig(max_consecutive_errors=4)).run()
    assert summary.exit_code == EXIT_STAGE_FAILED and summary.stage_errors == 4


class FakeCaptioner:
    name = "fake-captioner"

    def __init__(self):
        self.calls = []

    def __call__(self, frame):
        self.calls.append(frame.index)
        return (f"level {frame_level(frame.image)}", -1.0)


class EveryN:
    def __init__(self, n):
        self.n = n

    def due(self, index, t):
        return index % self.n == 0


def test_captions_every_n_frames_on_files_are_deterministic(tmp_path):
    path = write_video(tmp_path / "v.avi", n=12)
    cap = FakeCaptioner()
    log = tmp_path / "log.jsonl"
    results = []
    with JsonlSink(log) as sink:
        Pipeline([SourceConfig(str(path))], SlowStage(0.0), captioner=cap, schedule_factory=lambda: EveryN(5),
                 log_sink=sink, on_result=results.append).run()
    assert cap.calls == [0, 5, 10]
    assert [r.caption.text for r in results] == ["level 0"] * 5 + ["level 50"] * 5 + ["level 100"] * 2
    assert [r.new_caption for r in results].count(True) == 3
    caps = [r for r in read_jsonl(log) if r["event"] == "caption"]
    assert [(c["frame_index"], c["raw"], c["shown"]) for c in caps] == [
        (0, "level 0", "level 0"), (5, "level 50", "level 50"), (10, "level 100", "level 100")]


def test_monitor_style_sources_are_tagged_and_independent(tmp_path):
    good = write_video(tmp_path / "good.avi", n=10)
    seen = []
    sources = [SourceConfig(str(good), name="cam-a"),
               SourceConfig("rtsp://127.0.0.1:9/none", name="cam-b", max_retries=1, backoff_initial_s=0.01,
                            open_timeout_s=1)]
    summary = Pipeline(sources, SlowStage(0.0), on_result=lambda r: seen.append(r.frame.source)).run()
    assert seen == ["cam-a"] * 10
    assert summary.exit_code == EXIT_OK
    assert summary.sources["cam-b"]["gave_up"] and summary.sources["cam-a"]["frames"] == 10


class ImageCaptioner:
    """Says what it sees: the grey level of the image (so each image has its own caption)."""

    name = "image-captioner"

    def __call__(self, frame):
        return (f"a photo of grey level {frame_level(frame.image)}", -1.0)


def test_each_image_of_a_folder_gets_its_own_caption_whatever_the_schedule(tmp_path):
    import cv2

    from streamcap.runner import run

    folder = tmp_path / "photos"
    folder.mkdir()
    levels = [40, 120, 200, 80]
    for i, level in enumerate(levels):
        img = np.full((60, 80, 3), level, np.uint8)
        img[5:15, 5:15] = (0, 0, 255)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    for caption in ({"every": 1}, {"every": 3}, {"interval": 2.0}):  # smoothing on (the default)
        results = []
        summary = run(str(folder), segment=False, caption=caption, captioner=ImageCaptioner(),
                      on_result=results.append)
        assert summary.exit_code == 0
        assert [r.caption.text for r in results] == [f"a photo of grey level {v}" for v in levels]
        assert all(r.new_caption for r in results)


def test_a_blank_first_frame_is_not_captioned_and_new_caption_marks_only_changes(tmp_path):
    import cv2

    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(12):
        img = np.zeros((120, 160, 3), np.uint8)  # frames 0-2: black (a fade-in)
        if i >= 3:
            img[:] = 100
            img[20:60, 20:60] = (0, 0, 255)
        writer.write(img)
    writer.release()

    class SameCaption:
        name = "same"

        def __init__(self):
            self.calls = []

        def __call__(self, frame):
            self.calls.append(frame.index)
            return ("a red square on grey", -1.0)

    cap = SameCaption()
    results = []
    Pipeline([SourceConfig(str(path))], SlowStage(0.0), captioner=cap, schedule_factory=lambda: EveryN(1),
             on_result=results.append).run()
    assert cap.calls == list(range(3, 12))  # nothing invented for the black frames
    assert [r.caption for r in results[:3]] == [None] * 3
    # The text never changes: new_caption only on the frame where it first appears.
    assert [r.frame.index for r in results if r.new_caption] == [3]


def _drawn_pipeline(tmp_path, stage, hud, n=4):
    from streamcap.render import Renderer

    path = write_video(tmp_path / "v.avi", n=n)
    images, results = [], []
    p = Pipeline([SourceConfig(str(path))], stage, renderer=Renderer(hud=hud, banner=False), hud=hud,
                 on_frame=lambda r, img: (results.append(r), images.append(img)))
    assert p.run().exit_code == 0
    return p, results, images


def test_hud_is_drawn_from_the_first_frame_of_a_short_file(tmp_path):
    from streamcap.render import Renderer

    _, results, images = _drawn_pipeline(tmp_path, SlowStage(0.0), hud=True)
    plain = Renderer(hud=False, banner=False)
    assert len(images) == 4
    for r, img in zip(results, images):  # the whole run takes well under the 1 s stats period
        assert (img[:40, :60] != plain.annotate(r.frame.image, r)[:40, :60]).any()


def test_random_weights_are_marked_on_every_frame(tmp_path):
    from streamcap.pipeline import UNTRAINED_NOTICE
    from streamcap.render import Renderer

    class Untrained(SlowStage):
        random_weights = True

    plain = Renderer(hud=False, banner=False)
    p, results, images = _drawn_pipeline(tmp_path, Untrained(0.0), hud=False)
    assert p.notice == UNTRAINED_NOTICE == "untrained segmenter"
    for r, img in zip(results, images):
        tagged = plain.annotate(r.frame.image, r, notice=UNTRAINED_NOTICE)
        assert (img[:20, -40:] == tagged[:20, -40:]).all() and (img[:20, -40:] != r.frame.image[:20, -40:]).any()
    p, results, images = _drawn_pipeline(tmp_path, SlowStage(0.0), hud=False)
    assert p.notice is None
    assert all((img[:20, -40:] == r.frame.image[:20, -40:]).all() for r, img in zip(results, images))


def test_round_robin_serves_every_source_when_all_always_have_a_frame(tmp_path):
    # Two live sources whose queues are never empty, a batch-1 model: each model call must go to
    # the sources in turn (a fixed scan order starved the second camera of `monitor`).
    a, b = write_video(tmp_path / "a.avi", n=4), write_video(tmp_path / "b.avi", n=4)
    p = Pipeline([SourceConfig(str(a), name="a", drop="latest"), SourceConfig(str(b), name="b", drop="latest")],
                 SlowStage(delay_s=0.0, batch_size=1))
    pending = {r.cfg.name: r for r in p.readers}
    image = np.zeros((8, 8, 3), np.uint8)
    served = []
    for i in range(6):
        for r in p.readers:
            while not r.queue.empty():
                r.queue.get_nowait()
            r.queue.put_nowait(Frame(r.cfg.name, i, i / 10, time.time(), image))
        served.extend(f.source for f in p.next_frames(pending))
    assert served == ["a", "b", "a", "b", "a", "b"]
