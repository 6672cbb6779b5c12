"""Keyframe segmentation with carried masks and tracking ids (streamcap.keyframes, streamcap.tracking)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED, read_jsonl
from streamcap.cli import app
from streamcap.errors import EXIT_OK
from streamcap.pipeline import PipelineConfig
from streamcap.runner import run
from streamcap.tracking import Tracker
from streamcap.types import Detections

W, H, SIDE, SPEED = 240, 176, 40, 4
NAMES = ("__background__", "square")


def _texture(h: int, w: int, seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    """Smooth random colour texture (something for the optical flow to hold on to)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 4.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.clip(np.array(tint, np.float32) + 120 * noise, 0, 255).astype(np.uint8)


BACKGROUND = _texture(H, W, 1, (90, 100, 70))
SQUARE = _texture(SIDE, SIDE, 2, (0, 0, 135))
TOP = 60


def square_x(i: int) -> int:
    return 10 + SPEED * i


def follows_square(box, i: int) -> bool:
    """The box overlaps the square's true box on frame i with IoU >= 0.8 (a box left where the
    square was 3 frames earlier scores 0.54)."""
    x = square_x(i)
    tx0, ty0, tx1, ty1 = x, TOP, x + SIDE, TOP + SIDE
    ix = max(0, min(box[2], tx1) - max(box[0], tx0))
    iy = max(0, min(box[3], ty1) - max(box[1], ty0))
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + SIDE * SIDE - inter
    return inter / union >= 0.8


def leads_with_square(box, i: int) -> bool:
    """The box's leading (right) edge is where the square's is on frame i (within 3 px) and the
    box holds the square. (Its trailing edge may lag: the carrier can leave a short trail over the
    background the square uncovers.) A result drawn where the model saw it, 6 frames earlier, is
    24 px behind."""
    x = square_x(i)
    return abs(box[2] - (x + SIDE)) <= 3 and box[0] <= x + 3 and abs(box[1] - TOP) <= 6 and abs(box[3] - TOP - SIDE) <= 6


def moving_square_video(path: Path, n: int, fps: float = 24.0) -> Path:
    """A textured square moving SPEED px a frame to the right over a grey texture."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for i in range(n):
        img = BACKGROUND.copy()
        x = square_x(i)
        img[TOP:TOP + SIDE, x:x + SIDE] = SQUARE
        writer.write(img)
    writer.release()
    return path


class SquareStage:
    """Finds the square exactly (it knows where frame i has it); ``delay_s`` makes it as slow as a model."""

    name = "square"
    batch_size = 1

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[int] = []

    def __call__(self, frames):
        out = []
        for f in frames:
            self.calls.append(f.index)
            if self.delay_s:
                time.sleep(self.delay_s)
            x = square_x(f.index)
            mask = np.zeros(f.image.shape[:2], bool)
            mask[TOP:TOP + SIDE, x:x + SIDE] = True
            out.append(Detections(boxes=np.array([[x, TOP, x + SIDE, TOP + SIDE]], np.float32), scores=np.array([0.9], np.float32),
                                  labels=np.array([1]), names=NAMES, masks=mask[None]))
        return out


def _frames(log: Path) -> list[dict]:
    return [r for r in read_jsonl(log) if r["event"] == "frame"]


def _video_hashes(path: Path) -> list[str]:
    cap = cv2.VideoCapture(str(path))
    hashes = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        hashes.append(hashlib.md5(img.tobytes()).hexdigest())
    cap.release()
    return hashes


def test_file_seg_every_4_loses_no_frame_and_is_the_same_on_every_run(tmp_path):
    video = moving_square_video(tmp_path / "square.avi", n=30)
    runs = []
    for k in range(2):
        stage = SquareStage()
        out, log = tmp_path / f"out{k}.avi", tmp_path / f"log{k}.jsonl"
        summary = run(str(video), out=out, log=log, caption=False, stage=stage,
                      pipeline=PipelineConfig(seg_every=4))
        assert summary.exit_code == EXIT_OK and summary.written == summary.frames_read == 30
        assert summary.dropped == 0 and summary.keyframes == 8
        assert stage.calls == list(range(0, 30, 4))  # keyframes are frames 0, 4, 8, ...
        frames = _frames(log)
        assert [f["frame_index"] for f in frames] == list(range(30))
        assert [f["keyframe"] for f in frames] == [i % 4 == 0 for i in range(30)]
        for f in frames:
            (obj,) = f["detections"]["objects"]
            assert obj["label"] == "square" and obj["score"] == 0.9 and obj["track_id"] == 1
            # On carried frames the box is the carried mask's: where the square is on that frame.
            assert follows_square(obj["box"], f["frame_index"]), f
        for f in frames:
            for key in ("time", "frame_time", "latency_ms"):
                f.pop(key)
        runs.append((frames, _video_hashes(out)))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][1]) == 30 and runs[0][1] == runs[1][1]


def test_a_late_keyframe_lands_on_the_objects_current_position(tmp_path):
    # Live path: a file played at 24 fps, a model that takes 0.25 s (6 frames): every result
    # belongs to a frame already written and must be carried forward to where the square is now.
    video = moving_square_video(tmp_path / "square.avi", n=48)
    stage = SquareStage(delay_s=0.25)
    log = tmp_path / "log.jsonl"
    seen = []
    summary = run(str(video), log=log, caption=False, stage=stage, kind="file", realtime=True, drop="latest",
                  queue_size=8, pipeline=PipelineConfig(seg_every="auto"), on_result=seen.append)
    assert summary.exit_code == EXIT_OK
    frames = _frames(log)
    assert len(frames) == summary.written == len(seen)
    with_objects = [f for f in frames if f["detections"]["count"]]
    assert with_objects, "no keyframe result was ever drawn"
    first = with_objects[0]["frame_index"]
    assert first > stage.calls[0]  # the first result arrived after its own frame was written
    for f in frames:
        if f["frame_index"] >= first:
            (obj,) = f["detections"]["objects"]
            assert leads_with_square(obj["box"], f["frame_index"]), f
            assert obj["track_id"] == 1
    # The drawn masks follow the square too.
    for r in seen:
        if len(r.detections):
            x, y, w, h = cv2.boundingRect(r.detections.masks[0].astype(np.uint8))
            assert leads_with_square((x, y, x + w, y + h), r.frame.index)
    # Frames marked keyframe are those sent to the model (the last may still be waiting at the end).
    flagged = {f["frame_index"] for f in frames if f["keyframe"]}
    assert set(stage.calls) <= flagged and len(flagged - set(stage.calls)) <= 1


DAVIS = SHARED / "davis"


class GroundTruthStage:
    """Returns the hand-drawn DAVIS mask of the frame as the detection (a perfect model)."""

    name = "davis-gt"
    batch_size = 1

    def __init__(self, masks: list[Path]) -> None:
        self.masks = masks

    def __call__(self, frames):
        out = []
        for f in frames:
            m = cv2.imread(str(self.masks[f.index]), cv2.IMREAD_GRAYSCALE) > 127
            x, y, w, h = cv2.boundingRect(m.astype(np.uint8))
            out.append(Detections(boxes=np.array([[x, y, x + w, y + h]], np.float32), scores=np.array([0.8], np.float32),
                                  labels=np.array([1]), names=NAMES, masks=m[None]))
        return out


@pytest.mark.skipif(not (DAVIS / "blackswan").is_dir(), reason="../shared/davis not present")
def test_one_davis_object_keeps_one_id_through_its_clip(tmp_path):
    seq = DAVIS / "blackswan"
    stage = GroundTruthStage(sorted((seq / "masks").glob("*.png")))
    seen = []
    summary = run(str(seq / "frames"), caption=False, stage=stage, on_result=seen.append,
                  pipeline=PipelineConfig(seg_every=6))
    assert summary.exit_code == EXIT_OK and len(seen) == 50
    ids = [list(r.extras["track_ids"]) for r in seen]
    assert all(len(i) == 1 for i in ids)  # the swan is carried to every frame
    assert {i[0] for i in ids} == {1}


def test_tracker_keeps_ids_when_objects_come_in_another_order():
    a = np.zeros((40, 40), bool)
    a[5:15, 5:15] = True
    b = np.zeros((40, 40), bool)
    b[20:35, 20:35] = True
    t = Tracker()
    first = t.match([], [], [], [a, b], [1, 1])
    assert list(first) == [1, 2]
    a2, b2 = np.roll(a, 2, axis=1), np.roll(b, 2, axis=0)
    assert list(t.match([a, b], [1, 1], first, [b2, a2], [1, 1])) == [2, 1]
    # A different class never inherits an id; an object that is new gets the next one.
    c = np.zeros((40, 40), bool)
    c[0:3, 37:40] = True
    assert list(t.match([a, b], [1, 1], first, [a2, c], [2, 1])) == [3, 4]


def test_no_track_leaves_ids_out(tmp_path):
    video = moving_square_video(tmp_path / "square.avi", n=6)
    log = tmp_path / "log.jsonl"
    seen = []
    run(str(video), log=log, caption=False, stage=SquareStage(), on_result=seen.append,
        pipeline=PipelineConfig(seg_every=3, track=False))
    assert all("track_ids" not in r.extras for r in seen)
    assert all("track_id" not in f["detections"]["objects"][0] for f in _frames(log))


def test_every_frame_segmented_also_gives_ids_and_keyframe_true(tmp_path):
    video = moving_square_video(tmp_path / "square.avi", n=6)
    log = tmp_path / "log.jsonl"
    run(str(video), log=log, caption=False, stage=SquareStage())
    frames = _frames(log)
    assert [f["keyframe"] for f in frames] == [True] * 6
    assert [f["detections"]["objects"][0]["track_id"] for f in frames] == [1] * 6


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5"])
def test_bad_seg_every_is_one_line_and_exit_2(tmp_path, value):
    from typer.testing import CliRunner

    video = moving_square_video(tmp_path / "square.avi", n=3)
    result = CliRunner().invoke(app, ["file", str(video), "--no-caption", "--no-segment", "--seg-every", value])
    assert result.exit_code == 2
    assert "--seg-every must be auto or a whole number" in result.output


def test_log_schema_2_frame_records_carry_keyframe_and_track_id(tmp_path):
    from streamcap.sinks import JSONL_SCHEMA_VERSION

    video = moving_square_video(tmp_path / "square.avi", n=4)
    log = tmp_path / "log.jsonl"
    summary = run(str(video), log=log, caption=False, stage=SquareStage(), pipeline=PipelineConfig(seg_every=2))
    records = read_jsonl(log)
    assert JSONL_SCHEMA_VERSION == 2 and all(r["schema"] == 2 for r in records)
    frames = _frames(log)
    assert [f["keyframe"] for f in frames] == [True, False, True, False]
    assert all(set(f["detections"]["objects"][0]) == {"label", "score", "box", "track_id"} for f in frames)
    end = records[-1]
    assert end["event"] == "end" and end["keyframes"] == summary.keyframes == 2


def test_max_fps_caps_what_a_live_source_writes(tmp_path):
    video = moving_square_video(tmp_path / "square.avi", n=24)  # 1 s at 24 fps
    seen = []
    summary = run(str(video), caption=False, stage=SquareStage(), kind="file", realtime=True, drop="latest",
                  queue_size=8, pipeline=PipelineConfig(seg_every="auto", max_fps=8), on_result=seen.append)
    assert summary.exit_code == EXIT_OK and summary.frames_read == 24
    times = [r.frame.mono_ts for r in seen]
    assert 1 <= len(seen) <= 12
    assert all(b - a >= 0.95 / 8 for a, b in zip(times, times[1:]))  # by the frames' own read times
    assert summary.written + summary.dropped == summary.frames_read  # the capped frames count as dropped


class FailingOn(SquareStage):
    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad = bad

    def __call__(self, frames):
        if frames[0].index in self.bad:
            raise RuntimeError(f"fake failure on frame {frames[0].index}")
        return super().__call__(frames)


def test_a_failed_keyframe_is_logged_and_its_frames_keep_the_carried_objects(tmp_path):
    video = moving_square_video(tmp_path / "square.avi", n=12)
    log = tmp_path / "log.jsonl"
    summary = run(str(video), log=log, caption=False, stage=FailingOn({4}), pipeline=PipelineConfig(seg_every=4))
    assert summary.exit_code == EXIT_OK and summary.written == 12 and summary.stage_errors == 1
    records = read_jsonl(log)
    assert [r["frame_index"] for r in records if r["event"] == "stage_error"] == [4]
    frames = _frames(log)
    assert [f["keyframe"] for f in frames] == [i in (0, 8) for i in range(12)]
    assert all(f["detections"]["count"] == 1 for f in frames)  # frames 4-7 carried from keyframe 0


def test_two_live_sources_share_the_keyframe_worker(tmp_path):
    from streamcap.capture import SourceConfig
    from streamcap.pipeline import Pipeline

    a = moving_square_video(tmp_path / "a.avi", n=24)
    b = moving_square_video(tmp_path / "b.avi", n=24)
    stage = SquareStage(delay_s=0.05)
    seen = []
    sources = [SourceConfig(str(p), name=p.stem, kind="file", realtime=True, drop="latest", queue_size=8)
               for p in (a, b)]
    summary = Pipeline(sources, stage, config=PipelineConfig(seg_every="auto"), on_result=seen.append).run()
    assert summary.exit_code == EXIT_OK
    for name in ("a", "b"):
        mine = [r for r in seen if r.frame.source == name]
        assert [r.frame.index for r in mine] == sorted(r.frame.index for r in mine)  # in order
        assert any(r.extras["keyframe"] for r in mine)  # each camera gets model calls
        assert any(len(r.detections) for r in mine)
        # ids are per source: each square is object 1 of its own camera
        assert {int(i) for r in mine for i in r.extras["track_ids"]} == {1}


def test_file_keyframe_frames_compute_no_flow_unless_tracks_are_matched_on_them(tmp_path, monkeypatch):
    # A blocking source's keyframe frame shows the model's own objects: the carrier needs no flow
    # to it, except to give the tracker the carried masks to match (tracking on, objects alive).
    from streamcap import carry

    video = moving_square_video(tmp_path / "square.avi", n=30)
    steps: list[int] = []
    real_step = carry.Carrier.step
    monkeypatch.setattr(carry.Carrier, "step", lambda self, image, frame=None: (steps.append(frame), real_step(self, image, frame))[1])
    results = {}
    for track in (False, True):
        steps.clear()
        seen = []
        summary = run(str(video), caption=False, stage=SquareStage(), on_result=seen.append,
                      pipeline=PipelineConfig(seg_every=4, track=track))
        assert summary.exit_code == EXIT_OK and summary.written == 30
        carried_frames = [i for i in range(30) if i % 4]
        assert steps == (carried_frames if not track else sorted(carried_frames + list(range(4, 30, 4))))
        results[track] = [(r.extras["keyframe"], r.detections.boxes.tolist(), r.detections.masks.tobytes()) for r in seen]
    assert results[False] == results[True]  # the same objects and masks either way


def test_auto_rate_switches_with_hysteresis():
    from streamcap.keyframes import AutoRate

    rate = AutoRate(enter=0.7, exit=0.9, smooth=1.0)  # smooth 1: the newest measurement counts alone
    for k in range(5):
        rate.frame("cam", k * 0.04)  # 25 fps
    assert rate.decide(0.16) is False  # no model call measured yet: keyframes
    rate.model(0.02, 1)  # 20 ms a frame: load 0.5
    assert rate.decide(0.16) is True
    rate.model(0.032, 1)  # load 0.8: between the two thresholds, stays
    assert rate.decide(0.16) is True
    rate.model(0.04, 1)  # load 1.0: keyframes
    assert rate.decide(0.16) is False
    rate.model(0.032, 1)  # 0.8 again: stays on keyframes
    assert rate.decide(0.16) is False
    rate.frame("cam2", 0.16)
    rate.frame("cam2", 0.20)  # a second camera at 25 fps doubles the load
    rate.model(0.02, 2)  # 10 ms a frame: 0.25 per camera
    assert rate.load(0.20) == pytest.approx(0.5)
    assert rate.decide(0.20) is True
    assert rate.load(0.20 + 2.0) is None  # both quiet for more than ACTIVE_S: nothing to decide on


def test_auto_rate_counts_frames_dropped_while_the_model_was_busy():
    from streamcap.keyframes import AutoRate

    rate = AutoRate(smooth=1.0)
    rate.frame("cam", 0.0, index=0)
    rate.frame("cam", 0.12, index=3)  # frames 1 and 2 were dropped: the camera still sends 25 fps
    rate.model(0.03, 1)
    assert rate.load(0.12) == pytest.approx(0.75)
    strided = AutoRate(smooth=1.0)
    strided.frame("cam", 0.0, index=0, stride=2)
    strided.frame("cam", 0.08, index=2, stride=2)  # --stride 2: one frame in two is for us
    strided.model(0.03, 1)
    assert strided.load(0.08) == pytest.approx(0.375)


def _live_auto(tmp_path, stage, n=48):
    video = moving_square_video(tmp_path / "square.avi", n=n)
    seen = []
    summary = run(str(video), caption=False, stage=stage, kind="file", realtime=True, drop="latest",
                  queue_size=8, pipeline=PipelineConfig(seg_every="auto"), on_result=seen.append)
    assert summary.exit_code == EXIT_OK
    return seen


def test_auto_segments_every_frame_when_the_model_keeps_up(tmp_path):
    stage = SquareStage()  # instant: far faster than 24 fps
    seen = _live_auto(tmp_path, stage)
    flags = [r.extras["keyframe"] for r in seen]
    first = flags.index(True)
    # After the first measured call every frame is segmented and drawn with its own objects.
    settled = seen[first + 2:]
    assert len(settled) >= 30 and all(r.extras["keyframe"] for r in settled)
    assert [r.frame.index for r in settled] == stage.calls[-len(settled):]
    for r in settled:
        x = square_x(r.frame.index)
        assert r.detections.boxes.tolist() == [[x, TOP, x + SIDE, TOP + SIDE]]  # the model's own box
        assert list(r.extras["track_ids"]) == [1]


def test_auto_uses_keyframes_when_the_model_is_slower_than_the_frames(tmp_path):
    stage = SquareStage(delay_s=0.1)  # 10 frames a second against 24
    seen = _live_auto(tmp_path, stage)
    flags = [r.extras["keyframe"] for r in seen]
    assert len(seen) >= 40  # every frame is still drawn
    assert 3 <= sum(flags) <= len(seen) // 2  # the model ran on some frames only
    assert any(len(r.detections) and not r.extras["keyframe"] for r in seen)  # carried frames
