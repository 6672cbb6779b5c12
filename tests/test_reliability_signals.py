"""SIGINT and SIGTERM at random (seeded) moments of ``file``, ``live`` and ``monitor``: the
process exits within 5 s with 130 / 143, the video plays to its end with every written frame,
and the JSONL has only complete lines ending with the "end" record."""

from __future__ import annotations

import random
import signal
import time

import pytest

from conftest import MEDIA, SAMPLE_CLIP, probe_frames, write_video
from reliability_helpers import (ENGINE_ONLY, FAST_NET, Child, check_complete_log, follow, frames,  # noqa: F401
                                 wait_for)

pytestmark = pytest.mark.slow

CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _long_video(tmp_path):
    """Long enough that the signal always lands mid-run (795 frames at 768x576)."""
    clip = MEDIA / "vtest.avi"
    return clip if clip.exists() else write_video(tmp_path / "long.avi", n=600, size=(640, 480))


def _interrupt(child: Child, log, sig, delay: float) -> float:
    wait_for("the first frames", lambda: len(frames(follow(log))) >= 2, child, timeout=40)
    time.sleep(delay)
    assert child.proc.poll() is None, "finished before the signal"
    child.proc.send_signal(sig)
    t0 = time.monotonic()
    child.wait(timeout=30)
    return time.monotonic() - t0


def _check(child: Child, log, sig, took: float, out=None) -> None:
    assert took < 5.0, f"took {took:.1f} s to exit after the signal"
    assert child.proc.returncode == CODES[sig], child.stderr
    assert "Traceback" not in child.stderr
    records = check_complete_log(log)
    end = records[-1]
    assert end["event"] == "end" and end["exit_code"] == CODES[sig]
    assert end["reason"] == ("sigint" if sig == signal.SIGINT else "sigterm")
    assert len(frames(records)) == end["written"] > 0
    if out is not None:
        assert probe_frames(out) == end["written"]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_file_interrupted_at_a_random_moment(tmp_path, sig, seed):
    delay = random.Random(seed * 100 + sig).uniform(0.2, 2.5)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    child = Child(tmp_path, "file", str(_long_video(tmp_path)), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    _check(child, log, sig, _interrupt(child, log, sig, delay), out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_live_interrupted_at_a_random_moment(tmp_path, sig):
    delay = random.Random(7 + sig).uniform(0.2, 4.0)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    child = Child(tmp_path, "live", "--source", str(SAMPLE_CLIP), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    _check(child, log, sig, _interrupt(child, log, sig, delay), out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_monitor_interrupted_at_a_random_moment(tmp_path, sig, rtsp_server):
    delay = random.Random(11 + sig).uniform(0.2, 3.0)
    cams = [rtsp_server(mount=f"cam{i}", size=(160, 120)).start() for i in (1, 2)]
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "monitor", *(c.url for c in cams), *FAST_NET, *ENGINE_ONLY, "--log", str(log),
                  "--stats-interval", "1")
    _check(child, log, sig, _interrupt(child, log, sig, delay))


def test_twice_interrupted_and_interrupted_while_connecting(tmp_path):
    # Ctrl-C pressed twice: still one clean shutdown.
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    child = Child(tmp_path, "file", str(_long_video(tmp_path)), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    wait_for("the first frames", lambda: len(frames(follow(log))) >= 2, child, timeout=40)
    child.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    child.proc.send_signal(signal.SIGINT)
    child.wait(timeout=10)
    _check(child, log, signal.SIGINT, 0.0, out)
    # SIGTERM while a camera is still being connected to (nothing listens: retries with backoff).
    log2 = tmp_path / "log2.jsonl"
    child = Child(tmp_path, "live", "--source", "rtsp://127.0.0.1:9/none", "--open-timeout", "1", *ENGINE_ONLY,
                  "--log", str(log2), "--out", str(tmp_path / "none.mp4"), name="connecting")
    wait_for("a failed connect", lambda: any(r.get("status") == "connect_failed" for r in follow(log2)), child)
    child.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert child.wait(timeout=10) == 143, child.stderr
    assert time.monotonic() - t0 < 5.0
    end = check_complete_log(log2)[-1]
    assert end["event"] == "end" and end["exit_code"] == 143 and end["written"] == 0
    assert not (tmp_path / "none.mp4").exists()


def test_monitor_with_many_hung_cameras_exits_within_5_s(tmp_path):
    """Six cameras whose server accepts the connection and never answers: each reader is stuck
    in an open that only its --open-timeout ends. A signal still ends the run within 5 s."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel; nobody ever reads or answers
    port = silent.getsockname()[1]
    log = tmp_path / "log.jsonl"
    try:
        child = Child(tmp_path, "monitor", *(f"rtsp://127.0.0.1:{port}/cam{i}" for i in range(6)),
                      "--open-timeout", "30", *ENGINE_ONLY, "--log", str(log))
        wait_for("the run to start", lambda: any(r["event"] == "start" for r in follow(log)), child)
        time.sleep(1.0)
        child.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert child.wait(timeout=30) == 143, child.stderr
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert took < 5.0, f"took {took:.1f} s to exit"
    end = check_complete_log(log)[-1]
    assert end["event"] == "end" and end["exit_code"] == 143


def test_killed_hard_the_video_plays_up_to_about_the_last_second(tmp_path):
    """SIGKILL (the OOM killer, a power cut) gives no chance to finalize: the MP4 is written in
    fragments of about a second, so it still plays up to the last one, and the log, written a
    whole line per write, still parses."""
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    child = Child(tmp_path, "file", str(_long_video(tmp_path)), "--out", str(out), "--log", str(log), *ENGINE_ONLY)
    wait_for("frames for a few seconds of video", lambda: len(frames(follow(log))) >= 60, child, timeout=60)
    child.proc.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL
    written = len(frames(check_complete_log(log)))
    playable = probe_frames(out)
    assert 0 < playable <= written
    assert playable >= 20  # at most a few fragments (plus the encoder's look-ahead) are lost
