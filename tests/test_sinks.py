from __future__ import annotations

import json
import os

import subprocess

import numpy as np
import pytest

from conftest import probe_frames, read_jsonl
from streamcap.errors import BadInputError
from streamcap.sinks import (JSONL_SCHEMA_VERSION, JsonlSink, VideoFileSink, check_output_path,
                             check_video_output)


def test_jsonl_lines_parse_and_carry_schema(tmp_path):
    path = tmp_path / "log.jsonl"
    with JsonlSink(path) as sink:
        sink.write("frame", source="cam", frame_index=3, pts_s=0.3, detections={"count": np.int64(2)})
        sink.write("caption", source="cam", raw="a dog", shown="a dog")
    records = read_jsonl(path)
    assert [r["event"] for r in records] == ["frame", "caption"]
    assert all(r["schema"] == JSONL_SCHEMA_VERSION and r["time"].endswith("+00:00") for r in records)
    assert records[0]["detections"]["count"] == 2


def test_jsonl_appends_and_repairs_a_cut_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"event":"old","schema":1}\n{"event":"cut-of', encoding="utf-8")
    with JsonlSink(path) as sink:
        sink.write("new")
    records = read_jsonl(path)
    assert [r["event"] for r in records] == ["old", "new"]


def test_jsonl_is_flushed_per_line(tmp_path):
    path = tmp_path / "log.jsonl"
    sink = JsonlSink(path).open()
    sink.write("one")
    assert json.loads(path.read_text().splitlines()[0])["event"] == "one"  # before close
    sink.close()


def test_jsonl_refuses_symlink(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    link = tmp_path / "log.jsonl"
    link.symlink_to(target)
    with pytest.raises(BadInputError, match="symbolic link"):
        check_output_path(link, append=True)
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("codec,expected", [("auto", "h264"), ("mp4v", "mp4v")])
def test_video_sink_writes_playable_file_of_source_size(tmp_path, codec, expected):
    path = tmp_path / f"out_{codec}.mp4"
    with VideoFileSink(path, fps=10, codec=codec) as sink:
        for i in range(12):
            sink.write(np.full((121, 161, 3), i * 20, np.uint8), pts_s=i / 10)
        sink.write(np.zeros((240, 320, 3), np.uint8), pts_s=1.2)  # a size change is resized
    assert expected in sink.encoder
    assert sink.size == (160, 120)
    assert probe_frames(path) == 13


def test_check_output_path(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"x")
    with pytest.raises(BadInputError, match="is the input"):
        check_output_path(src, [str(src)], overwrite=True)
    with pytest.raises(BadInputError, match="exists"):
        check_output_path(src)
    assert check_output_path(src, overwrite=True) == src
    assert check_output_path(tmp_path / "new" / "dir" / "out.mp4").parent.is_dir()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(BadInputError, match="cannot create output folder"):
        check_output_path(blocker / "sub" / "out.mp4")
    with pytest.raises(BadInputError, match="not writable|cannot create"):
        check_output_path("/proc/streamcap-test/out.mp4")


@pytest.mark.parametrize("name,codec_name", [("out.avi", "mpeg4"), ("out.mkv", "h264"), ("out.mov", "h264")])
def test_each_container_gets_a_codec_it_holds(tmp_path, name, codec_name):
    path = tmp_path / name
    with VideoFileSink(path, fps=10) as sink:
        for i in range(12):
            sink.write(np.full((120, 160, 3), i * 20, np.uint8), pts_s=i / 10)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    assert probe.stdout.strip() == codec_name and probe.stderr == ""
    assert probe_frames(path) == 12


def test_video_output_name_and_codec_are_checked():
    check_video_output("a.MP4", "h264")
    check_video_output("a.avi", "auto")
    with pytest.raises(BadInputError, match="cannot hold H.264"):
        check_video_output("a.avi", "h264")
    with pytest.raises(BadInputError, match="must end in"):
        check_video_output("a.webm")
    with pytest.raises(BadInputError, match="unknown codec"):
        check_video_output("a.mp4", "vp9")


def test_output_that_cannot_be_created_is_refused_up_front(tmp_path):
    with pytest.raises(BadInputError, match="cannot create output /proc/q.mp4"):
        check_output_path("/proc/q.mp4")  # the folder passes os.access as root; the file cannot exist
    new, old = tmp_path / "new.mp4", tmp_path / "old.jsonl"
    old.write_text("kept\n")
    check_output_path(new)
    check_output_path(old, append=True)
    assert not new.exists() and old.read_text() == "kept\n"  # the check leaves no trace


def test_make_record_redacts_urls_anywhere_and_leaves_the_rest_as_given():
    from streamcap.sinks import make_record

    objects = [{"label": "person", "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]} for _ in range(50)]
    plain = make_record("frame", source="cam", detections={"count": 50, "objects": objects})
    assert plain["detections"]["objects"] == objects  # nothing to redact: the fields as given
    rec = make_record("stage_error", source="cam", message="cannot open rtsp://user:secret@host/s",
                      detail={"tries": [1, 2, {"url": "http://a:b@c.example/x"}]}, objects=objects)
    text = json.dumps(rec)
    assert "secret" not in text and "a:b@" not in text
    assert rec["message"] == "cannot open rtsp://***@host/s" and rec["objects"] == objects
