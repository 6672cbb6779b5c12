"""The record tap (every record to subscribers, with or without a log) and event snapshots."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from conftest import SlowStage, read_jsonl, write_video
from streamcap.errors import BadInputError
from streamcap.events import EventStore
from streamcap.runner import run
from streamcap.sinks import JSONL_SCHEMA_FULL, _json_default
from streamcap.tap import RecordTap


class SceneCaptioner:
    """Says "a dark room" for the first frames, "a bright room" from frame 10 on."""

    name = "scenes"

    def __call__(self, frame):
        return ("a dark room" if frame.index < 10 else "a bright room", -0.5)


def _normal(record: dict) -> dict:
    return json.loads(json.dumps(record, default=_json_default))


def _run(tmp_path, n=20, **kw):
    video = write_video(tmp_path / "in.avi", n=n)
    return run(str(video), segment=False, caption={"every": 5, "smooth": False}, stage=SlowStage(0.0),
               captioner=SceneCaptioner(), **kw)


def test_tap_records_are_the_log_lines_in_order(tmp_path):
    log = tmp_path / "log.jsonl"
    seen = []
    summary = _run(tmp_path, log=log, on_record=seen.append)
    assert summary.exit_code == 0
    lines = read_jsonl(log)
    assert [_normal(r) for r in seen] == lines
    events = [r["event"] for r in lines]
    assert events[0] == "run" and events[-1] == "end" and events.count("frame") == 20
    assert lines[0]["schema_version"] == JSONL_SCHEMA_FULL and all(r["schema"] == 2 for r in lines)


def test_tap_without_log_still_sees_every_record(tmp_path):
    seen = []
    summary = _run(tmp_path, on_record=seen.append, index=False)
    assert summary.exit_code == 0
    assert [r["frame_index"] for r in seen if r["event"] == "frame"] == list(range(20))
    assert [r["shown"] for r in seen if r["event"] == "caption" and r["changed"]] == ["a dark room", "a bright room"]
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*.sqlite"))


def test_failing_and_frame_subscribers_never_stop_the_run(tmp_path):
    log = tmp_path / "log.jsonl"
    tap = RecordTap()
    calls = {"n": 0}

    def broken(record):
        calls["n"] += 1
        raise RuntimeError("subscriber bug")

    frames = []
    tap.subscribe(broken)
    tap.subscribe_frames(lambda result, image: frames.append((result.frame.index, image.shape)))
    tap.subscribe_frames(lambda result, image: 1 / 0)
    summary = _run(tmp_path, log=log, tap=tap)
    assert summary.exit_code == 0 and summary.written == 20
    lines = read_jsonl(log)
    assert lines[-1]["event"] == "end" and calls["n"] == len(lines)
    assert tap.subscriber_errors == len(lines) + 20
    assert [i for i, _ in frames] == list(range(20)) and frames[0][1] == (120, 160, 3)


def test_a_subscriber_may_write_records_through_the_tap(tmp_path):
    log = tmp_path / "log.jsonl"
    tap = RecordTap()

    def alert_on_bright(record):
        if record["event"] == "caption" and "bright" in record["shown"] and record["changed"]:
            tap.write("alert", source=record["source"], frame_index=record["frame_index"], rule="bright",
                      message=record["shown"])

    tap.subscribe(alert_on_bright)
    assert _run(tmp_path, log=log, tap=tap, events_dir=tmp_path / "ev").exit_code == 0
    lines = read_jsonl(log)
    alerts = [r for r in lines if r["event"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["frame_index"] == 10
    # the event store gave the alert a snapshot, written from the first frame it applies to
    assert (tmp_path / "ev" / alerts[0]["snapshot"]).is_file()
    assert lines.index(alerts[0]) == lines.index(next(r for r in lines if r["event"] == "caption"
                                                       and r["shown"] == "a bright room")) + 1


def test_snapshots_at_each_caption_change_and_the_log_points_to_them(tmp_path):
    events = tmp_path / "events"
    log = tmp_path / "log.jsonl"
    summary = _run(tmp_path, log=log, events_dir=events)
    assert summary.exit_code == 0
    lines = read_jsonl(log)
    captions = [r for r in lines if r["event"] == "caption"]
    assert [c["changed"] for c in captions] == [True, False, True, False]
    assert ["snapshot" in c for c in captions] == [True, False, True, False]
    for c in (captions[0], captions[2]):
        path = events / c["snapshot"]
        assert path.is_file() and not os.path.isabs(c["snapshot"]) and f"f{c['frame_index']:07d}" in path.name
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (120, 160, 3)
    # the snapshot is the annotated frame: the caption banner differs from the plain frame
    plain = np.full((120, 160, 3), 0, np.uint8)
    assert np.abs(cv2.imread(str(events / captions[0]["snapshot"])).astype(int) - plain).sum() > 0
    end = lines[-1]
    assert end["event"] == "end" and end["events"]["files"] == 2 and end["events"]["written"] == 2
    assert sorted(p.relative_to(events).as_posix() for p in events.rglob("*.jpg")) == sorted(
        c["snapshot"] for c in captions if c["changed"])


def test_events_dir_without_log_logs_beside_the_snapshots(tmp_path):
    events = tmp_path / "events"
    assert _run(tmp_path, events_dir=events).exit_code == 0
    lines = read_jsonl(events / "events.jsonl")
    names = [r["snapshot"] for r in lines if r.get("snapshot")]
    assert len(names) == 2 and all((events / n).is_file() for n in names)
    assert (events / "events.index.sqlite").is_file()


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def test_size_bound_removes_the_oldest_first(tmp_path):
    one = len(cv2.imencode(".jpg", _noise(0), [cv2.IMWRITE_JPEG_QUALITY, 85])[1])
    store = EventStore(tmp_path / "ev", max_mb=3.5 * one / 1e6).open()
    names = [store.snapshot("cam1", i, _noise(i), ts=1_800_000_000 + i) for i in range(6)]
    left = sorted(p.relative_to(tmp_path / "ev").as_posix() for p in (tmp_path / "ev").rglob("*.jpg"))
    assert left == names[3:]  # the three newest fit; the oldest went first
    usage = store.usage()
    assert usage["files"] == 3 and usage["removed"] == 3 and usage["bytes"] <= usage["max_bytes"]
    assert usage["bytes"] == sum((tmp_path / "ev" / n).stat().st_size for n in left)
    # a new run takes stock of what is there, oldest first, and keeps the bound
    again = EventStore(tmp_path / "ev", max_mb=1.5 * one / 1e6).open()
    assert again.usage()["files"] == 1 and (tmp_path / "ev" / names[5]).is_file()


def test_snapshot_names_are_safe_and_unique(tmp_path):
    store = EventStore(tmp_path / "ev").open()
    a = store.snapshot("rtsp://***@cam/../../etc", 7, _noise(1), ts=1_800_000_000)
    b = store.snapshot("rtsp://***@cam/../../etc", 7, _noise(2), ts=1_800_000_000)
    assert a != b and ".." not in a and a.endswith("-alert.jpg") and b.endswith("-alert-2.jpg")
    assert store.path(a).is_file()
    for bad in ("../x.jpg", "/etc/passwd", "cam/../../x.jpg", "x.txt"):
        with pytest.raises(ValueError):
            store.path(bad)


def test_events_dir_that_is_a_file_is_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BadInputError, match="is a file"):
        _run(tmp_path, events_dir=f)
    with pytest.raises(BadInputError, match="events-max-mb"):
        _run(tmp_path, events_dir=tmp_path / "ev", events_max_mb=0)
