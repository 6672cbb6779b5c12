"""Outputs that cannot be written: an unwritable folder, a disk that fills up while writing
(a small tmpfs when this process may mount one, else a file-size limit), and the output path
equal to the input path. A clear error comes before or at the failure, and anything partial
is named as such (NAME.partial.mp4)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess

import pytest

from conftest import SAMPLE_CLIP, probe_frames, run_cli, write_video
from reliability_helpers import ENGINE_ONLY, Child, check_complete_log


@contextlib.contextmanager
def tmpfs(path, size: str, *options: str):
    """A small tmpfs at ``path``; yields False where mounting is not allowed here."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    opts = ",".join((f"size={size}", *options))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past the limit fail with EFBIG, no signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_unwritable_output_folder_fails_before_any_work(tmp_path):
    folder = tmp_path / "locked"
    with tmpfs(folder, "1m", "ro") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only tmpfs here, and root may write anywhere")
            folder.chmod(0o500)
        log = tmp_path / "log.jsonl"
        result = run_cli("file", str(SAMPLE_CLIP), "--out", str(folder / "out.mp4"), "--log", str(log),
                         *ENGINE_ONLY)
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "not writable" in lines[0] and str(folder) in lines[0], result.stderr
        assert not log.exists()  # nothing started
        # the log into that folder is refused the same way
        result = run_cli("file", str(SAMPLE_CLIP), "--log", str(folder / "log.jsonl"), *ENGINE_ONLY)
        assert result.returncode == 2 and "not writable" in result.stderr


def test_output_folder_under_a_file_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_cli("file", str(SAMPLE_CLIP), "--out", str(blocker / "sub" / "out.mp4"), *ENGINE_ONLY)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot create output folder" in lines[0], result.stderr


def test_disk_full_while_writing_video_names_it_partial(tmp_path):
    disk = tmp_path / "disk"
    log = tmp_path / "log.jsonl"  # on another (roomy) disk
    with tmpfs(disk, "128k") as mounted:
        # The re-encoded sample is about 300 KB: it cannot fit in 128 KB.
        child = Child(tmp_path, "file", str(SAMPLE_CLIP), "--out", str(disk / "out.mp4"), "--log", str(log),
                      *ENGINE_ONLY, preexec_fn=None if mounted else _limit_file_size(128 * 1024))
        code = child.wait(timeout=60)
        names = sorted(p.name for p in disk.iterdir())
    assert code == 4, child.stderr
    err = [line for line in child.stderr.splitlines() if line.startswith("streamcap: error:")]
    assert len(err) == 1 and "cannot write video" in err[0], child.stderr
    assert ("No space left on device" if mounted else "File too large") in err[0]
    assert "Traceback" not in child.stderr
    assert names == ["out.partial.mp4"]  # never left under the name of a finished video
    records = check_complete_log(log)
    end = records[-1]
    assert end["event"] == "end" and end["exit_code"] == 4 and end["output_partial"] is True
    assert end["output"].endswith("out.partial.mp4") and 0 < end["written"] < 80
    assert "(PARTIAL)" in child.stderr


def test_partial_video_after_a_full_disk_plays_up_to_the_failure(tmp_path):
    disk = tmp_path / "disk"
    with tmpfs(disk, "256k") as mounted:
        child = Child(tmp_path, "file", str(SAMPLE_CLIP), "--out", str(disk / "out.mp4"), *ENGINE_ONLY,
                      preexec_fn=None if mounted else _limit_file_size(256 * 1024))
        assert child.wait(timeout=60) == 4, child.stderr
        partial = disk / "out.partial.mp4"
        assert partial.exists()
        assert probe_frames(partial) >= 10  # fragmented MP4: everything up to the last fragment


def test_disk_full_while_writing_log_stops_with_exit_4_and_next_run_repairs_it(tmp_path):
    disk = tmp_path / "logdisk"
    src = write_video(tmp_path / "in.avi", n=300)
    with tmpfs(disk, "8k") as mounted:
        if not mounted:
            pytest.skip("needs a tmpfs (a file-size limit cannot leave room to check the repair)")
        log = disk / "log.jsonl"
        result = run_cli("file", str(src), "--log", str(log), *ENGINE_ONLY)
        assert result.returncode == 4, result.stderr
        err = [line for line in result.stderr.splitlines() if line.startswith("streamcap: error:")]
        assert len(err) == 1 and "cannot write log" in err[0] and "No space left" in err[0], result.stderr
        kept = log.read_bytes()
        assert len(kept) > 1000  # what was written before the disk filled is still there
        check_complete_log(log)  # a line the disk had no room for was taken back whole
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        result = run_cli("file", str(write_video(tmp_path / "short.avi", n=3)), "--log", str(log), *ENGINE_ONLY)
        assert result.returncode == 0, result.stderr
        records = check_complete_log(log)  # a cut last line was removed, every line parses
        assert records[-1]["event"] == "end" and records[-1]["written"] == 3
        assert log.read_bytes().startswith(kept[: kept.rfind(b"\n") + 1])


def test_output_equal_to_input_is_refused_in_every_spelling(tmp_path):
    src = write_video(tmp_path / "in.mp4", n=3)
    before = src.read_bytes()
    os.link(src, tmp_path / "hardlink.mp4")
    (tmp_path / "sub").mkdir()
    for out in (src, tmp_path / "sub" / ".." / "in.mp4", tmp_path / "hardlink.mp4"):
        result = run_cli("file", str(src), "--out", str(out), "--overwrite", *ENGINE_ONLY)
        assert result.returncode == 2 and "is the input file" in result.stderr, (out, result.stderr)
    result = run_cli("file", str(src), "--log", str(src), *ENGINE_ONLY)  # appending to the video
    assert result.returncode == 2 and "is the input file" in result.stderr
    assert src.read_bytes() == before
    assert probe_frames(src) == 3


@pytest.mark.parametrize("option", ["--out", "--log"])
def test_output_in_proc_is_refused_before_any_model_loads(tmp_path, option):
    """/proc passes the folder checks (root may write anywhere); creating the file fails.
    The real models are asked for, so reaching them would take seconds and more lines."""
    other = ["--log", str(tmp_path / "log.jsonl")] if option == "--out" else ["--out", str(tmp_path / "o.mp4")]
    target = "/proc/streamcap_q.mp4" if option == "--out" else "/proc/streamcap_q.jsonl"
    result = run_cli("file", str(SAMPLE_CLIP), option, target, *other)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"cannot create output {target}" in lines[0], lines
    assert not list(tmp_path.iterdir())  # nothing written


def test_avi_output_plays_and_ffmpeg_says_nothing(tmp_path):
    out = tmp_path / "out.avi"
    result = run_cli("file", str(write_video(tmp_path / "in.mp4", n=12)), "--out", str(out), *ENGINE_ONLY)
    assert result.returncode == 0, result.stderr
    assert "not used" not in result.stderr and "mp4v" in result.stderr, result.stderr
    assert probe_frames(out) == 12
