from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from conftest import REPO, SAMPLE_CLIP, probe_frames, read_jsonl, run_cli, write_video
from streamcap.cli import app

runner = CliRunner()
ENGINE_ONLY = ["--no-segment", "--no-caption"]


def test_help_on_every_command():
    for cmd in ("file", "live", "monitor"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output


def test_file_command_writes_video_and_log(tmp_path):
    src = write_video(tmp_path / "in.avi", n=25)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    result = runner.invoke(app, ["file", str(src), "--out", str(out), "--log", str(log), *ENGINE_ONLY])
    assert result.exit_code == 0, result.output
    assert probe_frames(out) == 25
    records = read_jsonl(log)
    events = [r["event"] for r in records]
    assert events[0] == "run" and events[-1] == "end"
    frames = [r for r in records if r["event"] == "frame"]
    assert [r["frame_index"] for r in frames] == list(range(25))
    assert all(set(r) >= {"schema", "event", "time", "source", "frame_index", "pts_s", "frame_time",
                          "latency_ms", "detections", "caption"} for r in frames)
    assert records[-1]["written"] == 25 and records[-1]["reason"] == "eos"


def test_log_appends_across_runs(tmp_path):
    src = write_video(tmp_path / "in.avi", n=5)
    log = tmp_path / "log.jsonl"
    for _ in range(2):
        assert runner.invoke(app, ["file", str(src), "--log", str(log), *ENGINE_ONLY]).exit_code == 0
    assert [r["event"] for r in read_jsonl(log)].count("end") == 2


def _bad_file(folder, name, content):
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name,content,message", [
    ("missing.mp4", None, "not found"),
    ("zero.mp4", b"", "empty"),
    ("text.mp4", b"hello\n" * 50, "cannot"),
    ("300", None, "not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, name, content, message):
    result = run_cli("file", str(_bad_file(tmp_path, name, content)), "--out", str(tmp_path / "o.mp4"),
                     *ENGINE_ONLY)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_existing_output_is_not_clobbered(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["file", str(src), "--out", str(out), *ENGINE_ONLY])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_bytes() == b"precious"
    assert runner.invoke(app, ["file", str(src), "--out", str(out), "--overwrite", *ENGINE_ONLY]).exit_code == 0
    assert probe_frames(out) == 3


def test_output_equal_to_input_is_refused(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    result = runner.invoke(app, ["file", str(src), "--out", str(src), "--overwrite", *ENGINE_ONLY])
    assert result.exit_code == 2 and "input" in result.output


def test_unknown_option_value_exits_2(tmp_path):
    src = write_video(tmp_path / "in.avi", n=3)
    result = run_cli("file", str(src), "--drop", "sometimes", *ENGINE_ONLY)
    assert result.returncode == 2 and "drop" in result.stderr


USAGE_ERRORS = [
    (["file", "x", "--bogus"], "--bogus"),
    (["file"], "input"),
    (["file", "x", "--stride", "0"], "--stride"),
    (["file", "x", "--stride", "abc"], "--stride"),
    (["file", "x", "--beam", "0"], "--beam"),
    (["fiel", "x"], "fiel"),
    (["file", "x", "--caption-interval", "-1"], "--caption-interval"),
    (["file", "x", "--score-threshold", "1.5"], "--score-threshold"),
    (["file", "x", "--seg-size", "-1"], "--seg-size"),
    (["live", "--open-timeout", "0"], "--open-timeout"),
    (["live", "--duration", "-1"], "--duration"),
    (["monitor", "rtsp://cam/x", "--watchdog", "0"], "--watchdog"),
    (["monitor", "rtsp://cam/x", "--backoff-max", "-1"], "--backoff-max"),
    (["caption", "x", "--beam", "0"], "--beam"),
    (["models", "bogus"], "bogus"),
]


def test_usage_errors_exit_2_with_typers_message():
    """Through the real entry point (main), all at once: whichever typer (and click) is
    installed, a usage error is typer's usage message and exit 2, never an internal error."""
    env = {**os.environ, "COLUMNS": "200"}
    procs = [(args, subprocess.Popen([sys.executable, "-m", "streamcap", *args], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE))
             for args, _ in USAGE_ERRORS]
    for (args, proc), (_, word) in zip(procs, USAGE_ERRORS):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, proc.returncode, err)
        assert "internal error" not in err and "Traceback" not in err, (args, err)
        assert "Usage:" in err and word.lower() in err.lower(), (args, err)


def test_no_arguments_prints_help_not_an_error():
    res = run_cli(env={"COLUMNS": "200"})
    assert res.returncode in (0, 2), res  # click 8.2+ exits 2 after the help, older click 0
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    text = res.stdout + res.stderr
    assert "Usage:" in text and "monitor" in text and "caption" in text


def test_live_source_that_never_connects_exits_3(tmp_path):
    log = tmp_path / "log.jsonl"
    result = run_cli("live", "--source", "rtsp://127.0.0.1:9/nothing", "--max-retries", "1",
                     "--open-timeout", "1", "--log", str(log), *ENGINE_ONLY)
    assert result.returncode == 3, result.stderr
    assert "never connected" in result.stderr
    statuses = [r.get("status") for r in read_jsonl(log) if r["event"] == "source_status"]
    assert "connect_failed" in statuses and "gave_up" in statuses


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", ["file", "live"])
def test_signal_leaves_playable_video_and_complete_log(tmp_path, sig, code, command):
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    # `live` plays the clip at its own pace (8 s); `file` is slowed by a real-time pace too,
    # so that the signal lands mid-run.
    args = (["live", "--source", str(SAMPLE_CLIP)] if command == "live"
            else ["file", str(SAMPLE_CLIP), "--stride", "1"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "streamcap", *args, "--out", str(out), "--log", str(log),
                             *ENGINE_ONLY, *(["--seg-size", "64"] if False else [])],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if command == "file":
        # A file runs fast; interrupt as soon as the first frames are logged.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count('"frame"') < 3):
            time.sleep(0.01)
    else:
        time.sleep(3.0)
    proc.send_signal(sig)
    t0 = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("process did not exit within 10 s of the signal")
    assert time.monotonic() - t0 < 5.0
    records = read_jsonl(log)  # every line parses
    if proc.returncode == 0 and command == "file":
        pytest.skip("the file finished before the signal arrived")
    assert proc.returncode == code, stderr
    assert records[-1]["event"] == "end" and records[-1]["exit_code"] == code
    written = records[-1]["written"]
    assert written > 0 and probe_frames(out) == written


def test_first_frame_timeout_must_be_positive():
    r = run_cli("monitor", "rtsp://127.0.0.1:9/none", "--first-frame-timeout", "0", "--no-segment", "--no-caption")
    assert r.returncode == 2 and "internal error" not in r.stderr
    assert "--first-frame-timeout" in r.stderr
