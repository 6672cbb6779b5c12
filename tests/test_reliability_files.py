"""Files the user did not make: truncated, empty, not a video, a corrupt image among good ones,
variable frame rate, an AVI whose header counts dropped frames, names with spaces and non-ASCII
characters. Each ends with a one-line
error and a documented exit code, or with the bad frames skipped and counted in the log; and
nothing already written (an earlier log) is lost."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime

import pytest

from conftest import SAMPLE_CLIP, probe_frames, run_cli, write_video
from reliability_helpers import ENGINE_ONLY, check_complete_log

EARLIER = '{"schema":1,"event":"note","time":"2026-01-01T00:00:00.000+00:00","source":null}\n'


def _log_with_history(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(EARLIER)
    return log


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line]


def test_truncated_mp4_keeps_good_frames_and_counts_the_rest(tmp_path):
    data = SAMPLE_CLIP.read_bytes()  # 80 frames, index (moov) at the front
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: len(data) // 2])
    out, log = tmp_path / "out.mp4", _log_with_history(tmp_path)
    result = run_cli("file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    assert records[0]["event"] == "note"  # the earlier content is still there
    cut = [r for r in records if r.get("status") == "truncated"]
    assert len(cut) == 1 and cut[0]["expected_frames"] == 80
    decoded, missing = cut[0]["decoded_frames"], cut[0]["missing_frames"]
    assert 0 < decoded < 80 and decoded + missing == 80
    end = records[-1]
    assert end["written"] == decoded and end["frame_errors"] == missing
    assert probe_frames(out) == decoded
    assert "unreadable frames skipped" in result.stderr


def test_truncated_mp4_without_its_index_is_one_line_exit_2(tmp_path):
    src = write_video(tmp_path / "w.mp4", n=30)  # OpenCV writes the index (moov) at the end
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    log = _log_with_history(tmp_path)
    result = run_cli("file", str(src), "--out", str(tmp_path / "o.mp4"), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open video" in lines[0], result.stderr
    assert log.read_text() == EARLIER and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("name,content,message", [
    ("zero.mp4", b"", "empty (0 bytes)"),
    ("notes.mp4", b"this is not a video\n" * 40, "cannot open video"),
    ("random.mp4", bytes(range(256)) * 64, "cannot open video"),
])
def test_bad_file_is_one_line_exit_2_and_touches_nothing(tmp_path, name, content, message):
    src = tmp_path / name
    src.write_bytes(content)
    out, log = tmp_path / "o.mp4", _log_with_history(tmp_path)
    result = run_cli("file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert log.read_text() == EARLIER  # the log is only opened once the input checks out
    assert not out.exists()


def test_image_folder_with_a_corrupt_jpeg_skips_and_counts_it(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("dog.jpg", "horses.jpg", "messi5.jpg")):
        shutil.copy(SAMPLE_CLIP.parent / name, folder / f"{i * 2}_{name}")
    (folder / "1_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (folder / "3_empty.jpg").write_bytes(b"")
    out, log = tmp_path / "show.mp4", tmp_path / "log.jsonl"
    result = run_cli("file", str(folder), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    bad = [r for r in records if r["event"] == "frame_error"]
    assert [r["frame_index"] for r in bad] == [1, 3]
    assert "1_broken.jpg" in bad[0]["message"] and "3_empty.jpg" in bad[1]["message"]
    assert [r["frame_index"] for r in records if r["event"] == "frame"] == [0, 2, 4]
    assert records[-1]["frame_errors"] == 2 and records[-1]["written"] == 3
    assert probe_frames(out) == 3
    assert "2 unreadable frames skipped" in result.stderr


def test_folder_of_only_corrupt_images_is_exit_2(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"nope")
    result = run_cli("file", str(folder), *ENGINE_ONLY)
    assert result.returncode == 2 and "could be decoded" in result.stderr


def _vfr_video(folder, name="vfr.mp4"):
    """Three segments at 5, 25 and 5 fps joined without re-timing (70 frames)."""
    for fps, seg in ((5, "a.mp4"), (25, "b.mp4")):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=160x120:rate={fps}:duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        str(folder / seg)], check=True, timeout=60)
    (folder / "list.txt").write_text("file a.mp4\nfile b.mp4\nfile a.mp4\n")
    out = folder / name
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-i", str(folder / "list.txt"), "-c", "copy",
                    "-fps_mode", "passthrough", str(out)], check=True, timeout=60)
    return out


def test_variable_frame_rate_video_is_written_whole(tmp_path):
    # Frames closer together than 1/fps used to collide in the encoder's time base, and
    # the muxer then failed the whole file ("Invalid argument").
    src = _vfr_video(tmp_path)
    n = probe_frames(src)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    result = run_cli("file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    assert [r["frame_index"] for r in records if r["event"] == "frame"] == list(range(n))
    assert records[-1]["written"] == n and not records[-1]["output_partial"]
    assert probe_frames(out) == n


def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "my vidéos ü 東京"
    folder.mkdir()
    src = write_video(folder / "clip 1 – café.avi", n=12)
    out = tmp_path / "résultats ö" / "annoté 1.mp4"
    log = tmp_path / "journal é.jsonl"
    result = run_cli("file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    assert probe_frames(out) == 12
    records = check_complete_log(log)
    assert records[-1]["output"] == str(out)
    assert {r["source"] for r in records if r["event"] == "frame"} == {"clip 1 – café.avi"}
    # and the same names in an error message come out intact, on one line
    missing = run_cli("file", str(folder / "né pas là.mp4"), *ENGINE_ONLY)
    assert missing.returncode == 2 and "né pas là.mp4" in missing.stderr


def _sparse_avi(folder, seconds=6, every=6):
    """MPEG-4 in AVI at 15 fps nominal where only every ``every``-th frame (and the last) is real:
    the muxer writes empty index entries for the rest, so the header claims seconds * 15 frames
    (90) for 16 real ones, as a camera recording that drops frames writes it."""
    out = folder / "sparse.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate=15:duration={seconds}",
                    "-vf", f"select='not(mod(n\\,{every}))+eq(n\\,{seconds * 15 - 1})'", "-fps_mode", "passthrough",
                    "-c:v", "mpeg4", "-f", "avi", str(out)], check=True, timeout=60)
    return out


def _frame_times(path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return [float(t) for t in out.stdout.split()]


def test_avi_whose_header_counts_dropped_frames_is_whole(tmp_path):
    """The header's 90 frames are 16 real ones spread over 6 s: the file is whole (decoding
    reached the end of its stream), not truncated with 74 frame errors."""
    import cv2

    src = _sparse_avi(tmp_path)
    cap = cv2.VideoCapture(str(src))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 90  # what the header claims
    cap.release()
    times = _frame_times(src)
    assert len(times) == probe_frames(src) == 16
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    result = run_cli("file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    assert not [r for r in records if r.get("status") == "truncated"]
    assert "skipped" not in result.stderr
    assert [r["pts_s"] for r in records if r["event"] == "frame"] == [round(t, 3) for t in times]
    assert records[-1]["frame_errors"] == 0 and records[-1]["written"] == 16
    assert probe_frames(out) == 16


def test_live_plays_a_sparse_file_for_as_long_as_its_stream_lasts(tmp_path):
    """``live --source FILE`` paces by the frames' timestamps: 16 frames over 6 s take about
    6 s (not 16 / 15 fps = 1 s), so ``--duration`` ends the run before the file does."""
    src = _sparse_avi(tmp_path)
    times = _frame_times(src)
    log = tmp_path / "whole.jsonl"
    result = run_cli("live", "--source", str(src), "--log", str(log), *ENGINE_ONLY, timeout=90)
    assert result.returncode == 0, result.stderr
    records = check_complete_log(log)
    frames = [r for r in records if r["event"] == "frame"]
    assert [r["pts_s"] for r in frames] == [round(t, 3) for t in times]
    wall = [datetime.fromisoformat(r["frame_time"]).timestamp() for r in frames]
    # A lower bound only (load can only make it slower): at least 0.8x the stream's span.
    assert wall[-1] - wall[0] >= 0.8 * (times[-1] - times[0]), (wall[-1] - wall[0], times[-1] - times[0])
    assert records[-1]["reason"] == "eos" and records[-1]["written"] == 16
    short_log = tmp_path / "short.jsonl"
    result = run_cli("live", "--source", str(src), "--log", str(short_log), "--duration", "2", *ENGINE_ONLY,
                     timeout=90)
    assert result.returncode == 0, result.stderr
    end = check_complete_log(short_log)[-1]
    assert end["reason"] == "duration" and 0 < end["written"] < 16
