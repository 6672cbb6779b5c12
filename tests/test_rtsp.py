"""A real RTSP server (rtsp-server-perl fed by ffmpeg) killed and restarted mid-stream."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_jsonl

pytestmark = pytest.mark.slow


def _frames_after(records, when_event):
    idx = next(i for i, r in enumerate(records) if r["event"] == "source_status" and r["status"] == when_event)
    return [r for r in records[idx:] if r["event"] == "frame"]


def test_server_killed_and_restarted_reconnects(tmp_path, rtsp_server):
    server = rtsp_server(size=(160, 120)).start()  # a keyframe a second: the clip has one per 8 s loop
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcap", "live", "--source", server.url, "--rtsp-transport", "udp",
         "--read-timeout", "2", "--open-timeout", "3", "--watchdog", "4", "--no-segment", "--no-caption",
         "--log", str(log), "--duration", "30", "--stats-interval", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count('"frame"') < 10):
            time.sleep(0.2)
        assert log.exists() and log.read_text().count('"frame"') >= 10, "no frames before the kill"
        server.kill()
        time.sleep(4)
        server.start()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    records = read_jsonl(log)
    statuses = [r["status"] for r in records if r["event"] == "source_status"]
    assert statuses[0] == "connected"
    assert "lost" in statuses and "reconnected" in statuses
    reconnected = next(r for r in records if r.get("status") == "reconnected")
    assert reconnected["outage_s"] > 1.0
    assert len(_frames_after(records, "reconnected")) > 10, "no frames after reconnecting"
    frames = [r["frame_index"] for r in records if r["event"] == "frame"]
    assert frames == sorted(frames)
    assert any(r["event"] == "stats" for r in records)
    assert records[-1]["event"] == "end" and records[-1]["reason"] == "duration"


def test_http_source_is_read_as_a_live_stream(tmp_path):
    """An HTTP URL (a plain file server here) is a live source: read, tagged, logged."""
    import functools
    import http.server
    import threading

    from conftest import SAMPLE_CLIP

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SAMPLE_CLIP.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    log = tmp_path / "log.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}/{SAMPLE_CLIP.name}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "streamcap", "live", "--source", url, "--no-segment", "--no-caption",
             "--log", str(log), "--duration", "4"], cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    records = read_jsonl(log)
    assert next(r for r in records if r["event"] == "source_status")["status"] == "connected"
    frames = [r for r in records if r["event"] == "frame"]
    assert len(frames) > 5 and all(r["source"] == url for r in frames)
