"""`file`, `live` and `monitor` end to end with the real models made small: an untrained Mask
R-CNN at a small --seg-size and a caption checkpoint trained in this session to say one known
sentence per scene of a two-scene clip (tests/tiny_models.py). No fake stage anywhere.

What is asserted is behaviour: the frames in the video (ffprobe), frame records carrying the
segmenter's detections, caption records whose raw text is the sentence of the scene the
captioned frame shows, the end record and the exit code. Nothing about timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import tiny_models as tm
from conftest import probe_frames, read_jsonl
from streamcap.cli import app
from streamcap.rle import decode as rle_decode
from streamcap.segment import valid_class_names

runner = CliRunner()
SEG = ["--seg-weights", "random", "--seg-size", "64", "--max-detections", "2"]
SENTENCES = {text for _, text in tm.SCENES}
N_FRAMES = tm.SCENE_FRAMES * len(tm.SCENES)


@pytest.fixture(scope="session")
def scene_clip(tmp_path_factory) -> Path:
    return tm.write_scene_clip(tmp_path_factory.mktemp("clip") / "scenes.mp4")


@pytest.fixture(scope="session")
def stream_clip(tmp_path_factory) -> Path:
    """The same scenes at 25 fps for the RTSP cameras: FFmpeg's open of a stream reads about
    as many frames as it needs to learn the stream, so a 4 fps camera takes ~6 s to open."""
    return tm.write_scene_clip(tmp_path_factory.mktemp("clip") / "scenes25.mp4", fps=25.0)


@pytest.fixture(scope="session")
def tiny_caption(tmp_path_factory, scene_clip) -> Path:
    return tm.train_tiny_captioner(tmp_path_factory.mktemp("ckpt") / "tiny.pt", scene_clip)


def _records(log: Path, event: str, source: str | None = None) -> list[dict]:
    return [r for r in read_jsonl(log) if r["event"] == event and (source is None or r["source"] == source)]


def _check_run_record(log: Path, tiny_caption: Path) -> None:
    run = _records(log, "run")[-1]
    assert run["random_weights"] is True and run["stage"] != "noop"
    assert run["captioner"] == "caption"


def _check_detections(frames: list[dict], exact: int | None = None) -> None:
    names = set(valid_class_names())
    for rec in frames:
        det = rec["detections"]
        assert det is not None, "frame record without the segmenter's detections"
        assert det["count"] == len(det["objects"]) <= 2
        assert {o["label"] for o in det["objects"]} <= names
        if exact is not None:
            assert det["count"] == exact


def test_file_with_both_models(tmp_path, scene_clip, tiny_caption):
    out, log = tmp_path / "out.mp4", tmp_path / "run.jsonl"
    res = runner.invoke(app, ["file", str(scene_clip), "--out", str(out), "--log", str(log), *SEG,
                              "--score-threshold", "0", "--log-masks",
                              "--caption-model", str(tiny_caption), "--caption-every", "2"])
    assert res.exit_code == 0, res.output
    assert probe_frames(out) == N_FRAMES
    _check_run_record(log, tiny_caption)
    frames = _records(log, "frame")
    assert [r["frame_index"] for r in frames] == list(range(N_FRAMES))
    # Score threshold 0: the model keeps its 2 best boxes on every frame, each with a mask
    # at the frame's size.
    _check_detections(frames, exact=2)
    for rec in frames:
        masks = [rle_decode(m) for m in rec["detections"]["masks_rle"]]
        assert len(masks) == 2 and all(m.shape == (tm.CLIP_SIZE[1], tm.CLIP_SIZE[0]) for m in masks)
    captions = _records(log, "caption")
    assert [c["frame_index"] for c in captions] == list(range(0, N_FRAMES, 2))
    assert [c["raw"] for c in captions] == [tm.caption_of(c["frame_index"]) for c in captions]
    assert all(c["shown"] in SENTENCES and c["score"] <= 0 for c in captions)
    # every frame shows the caption current when it was processed (the first one from frame 0)
    assert all(r["caption"] in SENTENCES for r in frames)
    assert frames[0]["caption"] == tm.caption_of(0)
    end = _records(log, "end")[-1]
    assert (end["reason"], end["exit_code"], end["written"], end["stage_errors"]) == ("eos", 0, N_FRAMES, 0)


def test_live_file_source_runs_captions_on_their_own_worker(tmp_path, scene_clip, tiny_caption):
    out, log = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    res = runner.invoke(app, ["live", "--source", str(scene_clip), "--out", str(out), "--log", str(log), *SEG,
                              "--caption-model", str(tiny_caption), "--caption-every", "1"])
    assert res.exit_code == 0, res.output
    _check_run_record(log, tiny_caption)
    end = _records(log, "end")[-1]
    assert (end["reason"], end["exit_code"], end["stage_errors"]) == ("eos", 0, 0)
    assert end["written"] >= 1 and probe_frames(out) == end["written"]
    frames = _records(log, "frame")
    assert len(frames) == end["written"]
    _check_detections(frames)
    captions = _records(log, "caption")
    assert captions, "the live caption worker logged no caption"
    processed = {r["frame_index"] for r in frames}
    for c in captions:  # each caption is of a frame the segmenter processed, and says its scene
        assert c["frame_index"] in processed
        assert c["raw"] == tm.caption_of(c["frame_index"])
    assert all(r["caption"] in SENTENCES | {None} for r in frames)


def test_monitor_two_cameras_with_both_models(tmp_path, stream_clip, tiny_caption, rtsp_server):
    cams = [rtsp_server(stream_clip, mount=f"cam{i}", size=tm.CLIP_SIZE).start() for i in (1, 2)]
    log = tmp_path / "monitor.jsonl"
    res = runner.invoke(app, ["monitor", *(c.url for c in cams), "--log", str(log), *SEG,
                              "--caption-model", str(tiny_caption), "--caption-every", "1",
                              "--rtsp-transport", "udp", "--duration", "12"])  # the test server speaks UDP only
    assert res.exit_code == 0, res.output
    _check_run_record(log, tiny_caption)
    end = _records(log, "end")[-1]
    assert (end["reason"], end["exit_code"], end["stage_errors"]) == ("duration", 0, 0)
    for cam in cams:
        frames = _records(log, "frame", cam.url)
        assert frames, f"no frame records from {cam.url}"
        _check_detections(frames)
        captions = _records(log, "caption", cam.url)
        assert captions, f"no caption records from {cam.url}"
        # The stream is re-encoded by the server, so frame indexes do not name a scene here;
        # the model still says one of its two sentences, never a mixture.
        assert {c["raw"] for c in captions} <= SENTENCES
