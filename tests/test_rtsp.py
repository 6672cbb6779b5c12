"""Real RTSP servers: rtsp-server-perl fed by ffmpeg (UDP), killed and restarted mid-stream;
GStreamer's RTSP server for RTP over TCP."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_jsonl, run_cli

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


def test_rtsp_over_tcp_streams_and_the_transport_option_is_honoured(tmp_path, gst_rtsp_server):
    """A camera that offers RTP over TCP only (as cameras behind NAT are reached):
    ``--rtsp-transport tcp`` streams from it; ``udp`` is refused by the server (461
    Unsupported transport), so the option really picks the transport."""
    server = gst_rtsp_server(protocols="tcp").start()
    log = tmp_path / "tcp.jsonl"
    result = run_cli("live", "--source", server.url, "--rtsp-transport", "tcp", "--no-segment", "--no-caption",
                     "--log", str(log), "--duration", "4", timeout=90)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(log)
    assert [r["status"] for r in records if r["event"] == "source_status"] == ["connected", "ended"]
    frames = [r["frame_index"] for r in records if r["event"] == "frame"]
    assert len(frames) >= 10 and frames == sorted(set(frames))
    assert records[-1]["reason"] == "duration"
    udp_log = tmp_path / "udp.jsonl"
    udp = run_cli("live", "--source", server.url, "--rtsp-transport", "udp", "--max-retries", "0", "--no-segment",
                  "--no-caption", "--log", str(udp_log), timeout=90)
    assert udp.returncode == 3, udp.stderr
    gave_up = [r for r in read_jsonl(udp_log) if r.get("status") == "gave_up"]
    assert len(gave_up) == 1 and gave_up[0]["attempts"] == 1 and gave_up[0]["reason"] == "cannot open"
