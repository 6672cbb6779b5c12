from __future__ import annotations

import queue
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import MEDIA, frame_level, write_video
from streamcap.capture import EOS, SourceConfig, SourceReader, probe_file, redact_url, source_kind
from streamcap.errors import BadInputError


def drain(reader: SourceReader, timeout: float = 20.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = reader.queue.get(timeout=0.5)
        except queue.Empty:
            continue
        if item is EOS:
            return frames
        frames.append(item)
    raise AssertionError("reader did not finish")


def test_source_kinds(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert source_kind("0") == "webcam"
    assert source_kind("rtsp://cam/stream") == "stream"
    assert source_kind("http://cam/video.mjpg") == "stream"
    assert source_kind("rtmp://host/live") == "stream"
    assert source_kind(str(tmp_path / "imgs")) == "images"
    assert source_kind(str(tmp_path / "*.jpg")) == "images"
    assert source_kind("photo.JPG") == "images"
    assert source_kind("clip.mp4") == "file"


def test_drop_policy_defaults_by_kind():
    assert SourceConfig("0").resolved().drop == "latest"
    assert SourceConfig("rtsp://x/y").resolved().drop == "latest"
    assert SourceConfig("a.mp4").resolved().drop == "block"
    assert SourceConfig("a.mp4", drop="latest").resolved().drop == "latest"
    with pytest.raises(BadInputError):
        SourceConfig("a.mp4", drop="newest").resolved()


def test_redact_credentials():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    assert redact_url("rtsp://cam/live") == "rtsp://cam/live"
    cfg = SourceConfig("rtsp://admin:s3cret@cam/live").resolved()
    assert "s3cret" not in cfg.name and "admin" not in cfg.name


def test_file_reads_every_frame_in_order_with_timestamps(tmp_path):
    path = write_video(tmp_path / "v.avi", n=15, fps=10)
    reader = SourceReader(SourceConfig(str(path), queue_size=2))
    reader.start()
    frames = drain(reader)
    reader.join(5)
    assert [f.index for f in frames] == list(range(15))
    assert [frame_level(f.image) for f in frames] == [(i * 10) % 250 for i in range(15)]
    assert [round(f.pts_s, 3) for f in frames] == [round(i / 10, 3) for i in range(15)]
    walls = [f.wall_ts for f in frames]
    assert walls == sorted(walls) and walls[0] > 1e9
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (120, 160, 3)
    assert reader.dropped == 0


def test_stride_takes_every_nth_frame(tmp_path):
    path = write_video(tmp_path / "v.avi", n=20)
    reader = SourceReader(SourceConfig(str(path), stride=3))
    reader.start()
    frames = drain(reader)
    assert [f.index for f in frames] == [0, 3, 6, 9, 12, 15, 18]
    assert [frame_level(f.image) for f in frames] == [(i * 10) % 250 for i in (0, 3, 6, 9, 12, 15, 18)]
    assert frames[2].pts_s == pytest.approx(0.6, abs=1e-3)


def test_latest_policy_drops_and_keeps_newest(tmp_path):
    path = write_video(tmp_path / "v.mp4", n=30)
    reader = SourceReader(SourceConfig(str(path), drop="latest", queue_size=2))
    reader.start()
    reader.join(10)  # nobody consumes: only the newest frames survive
    items = []
    while not reader.queue.empty():
        items.append(reader.queue.get_nowait())
    assert items[-1] is EOS
    assert reader.dropped >= 27
    assert all(f.index >= 28 for f in items[:-1])


def test_image_folder_glob_and_single_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"im{i}.png"), np.full((40, 50, 3), i * 50, np.uint8))
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("ignored")
    events = []
    reader = SourceReader(SourceConfig(str(folder)), on_status=lambda s, st, **k: events.append((st, k)))
    reader.start()
    frames = drain(reader)
    assert [int(f.image.mean()) for f in frames] == [0, 50, 100]
    assert reader.errors == 1
    assert any(st == "frame_error" and "bad.jpg" in k["message"] for st, k in events)
    glob_reader = SourceReader(SourceConfig(str(folder / "im*.png")))
    glob_reader.start()
    assert len(drain(glob_reader)) == 3
    single = SourceReader(SourceConfig(str(MEDIA / "dog.jpg")))
    single.start()
    (frame,) = drain(single)
    assert frame.image.shape[2] == 3 and frame.index == 0


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    (b"", "empty"),
    (b"this is text, not a video\n" * 20, "cannot"),
])
def test_probe_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad file ü.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError) as err:
        probe_file(SourceConfig(str(path)).resolved())
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_probe_reports_fps_size_and_length(tmp_path):
    info = probe_file(SourceConfig(str(write_video(tmp_path / "v.mp4", n=12, fps=8))).resolved())
    assert info.fps == pytest.approx(8) and info.size == (160, 120) and info.frame_count == 12


def test_webcam_that_does_not_exist_gives_up(tmp_path):
    events = []
    cfg = SourceConfig("97", max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.02)
    reader = SourceReader(cfg, on_status=lambda s, st, **k: events.append(st))
    reader.start()
    assert drain(reader, timeout=30) == []
    assert reader.gave_up and not reader.ever_connected
    assert events.count("connect_failed") == 2 and events[-1] == "gave_up"


@pytest.mark.parametrize("retries,attempts,message", [
    (0, 1, "no connection after 1 attempt (no retries)"),
    (1, 2, "no connection after 2 attempts (the first and 1 retry)"),
    (2, 3, "no connection after 3 attempts (the first and 2 retries)"),
])
def test_max_retries_counts_retries_after_the_first_attempt(retries, attempts, message):
    events = []
    cfg = SourceConfig("97", max_retries=retries, backoff_initial_s=0.01, backoff_max_s=0.02)
    reader = SourceReader(cfg, on_status=lambda s, st, **k: events.append((st, k)))
    reader.start()
    assert drain(reader, timeout=30) == []
    failed = [k["attempt"] for st, k in events if st == "connect_failed"]
    assert failed == list(range(1, attempts))  # every attempt but the last is followed by a retry
    (gave_up,) = [k for st, k in events if st == "gave_up"]
    assert gave_up["attempts"] == attempts and gave_up["retries"] == retries
    assert gave_up["message"] == message and gave_up["reason"] == "cannot open"
    with pytest.raises(BadInputError):
        SourceConfig("97", max_retries=-1).resolved()


def test_watchdog_marks_silent_live_source_stalled():
    events = []
    reader = SourceReader(SourceConfig("rtsp://127.0.0.1:9/x", watchdog_s=0.5),
                          on_status=lambda s, st, **k: events.append(st))
    reader._connected = True  # as if connected, then nothing arrives
    reader._last_frame_mono = time.monotonic() - 1.0
    assert reader.check_watchdog() is True
    assert events == ["stalled"] and reader._force_reconnect.is_set()
    assert reader.check_watchdog() is False  # fires once per silence
