"""Cameras that drop: a real RTSP server (rtsp-server-perl fed by ffmpeg) killed and restarted
several times, a mount that publishes nothing (at start and mid-stream), a camera that never
comes up, a resolution change after a reconnect, and one camera of ``monitor`` failing while
the other keeps going; a camera whose keyframes are 17 s apart; GStreamer's RTSP server over TCP
killed and restarted."""

from __future__ import annotations

import time

import pytest

from conftest import probe_frames
from reliability_helpers import (ENGINE_ONLY, FAST_NET, Child, RssSampler, check_complete_log,  # noqa: F401
                                 count_status, follow, frames, statuses, wait_for)

pytestmark = pytest.mark.slow

# Publishers re-encode the sample at this size with a keyframe every 10 frames (1 s): the
# sample itself has one keyframe per 8 s loop, and a client that joins mid-loop would see
# nothing until the next one (longer than --read-timeout, so it would reconnect in a loop).
SMALL = (160, 120)


def _n_frames(log, source=None) -> int:
    return len(frames(follow(log), source))


def _backoffs_are_capped_and_growing(records: list[dict]) -> None:
    """Within each outage the delays between connect attempts double and never shrink."""
    run: list[float] = []
    for r in records:
        if r["event"] != "source_status":
            continue
        if r["status"] == "connect_failed":
            run.append(r["retry_in_s"])
        elif r["status"] in ("connected", "reconnected", "gave_up"):
            assert run == sorted(run), f"backoff shrank within one outage: {run}"
            assert all(d <= 30.0 for d in run)
            if len(run) >= 2:
                assert run[1] == pytest.approx(2 * run[0])
            run = []


def test_server_killed_and_restarted_three_times(tmp_path, rtsp_server):
    server = rtsp_server(size=SMALL).start()
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "live", "--source", server.url, *FAST_NET, *ENGINE_ONLY, "--log", str(log),
                  "--stats-interval", "2", "--duration", "120")
    sampler = None
    try:
        wait_for("first frames", lambda: _n_frames(log) >= 10, child, timeout=30)
        sampler = RssSampler(child.pid)
        sampler.start()
        for cycle in range(1, 4):
            server.kill()
            wait_for(f"loss #{cycle}", lambda: count_status(log, "lost") >= cycle, child, timeout=20)
            time.sleep(1.5)  # the camera stays down a while: the reader retries with backoff
            server.start()
            wait_for(f"reconnect #{cycle}", lambda: count_status(log, "reconnected") >= cycle, child, timeout=40)
            before = _n_frames(log)
            wait_for(f"frames after reconnect #{cycle}", lambda: _n_frames(log) >= before + 10, child, timeout=20)
        child.proc.send_signal(2)
        assert child.wait(timeout=15) == 130, child.stderr
    finally:
        child.kill()
        rss = sampler.stop() if sampler else []
    records = check_complete_log(log)
    st = statuses(records)
    assert st[0] == "connected" and st.count("lost") >= 3 and st.count("reconnected") >= 3, st
    assert "connect_failed" in st  # the camera was down when the reader retried
    outages = [r["outage_s"] for r in records if r.get("status") == "reconnected"]
    assert all(o > 0.5 for o in outages), outages  # the outage's length is in the log
    _backoffs_are_capped_and_growing(records)
    idx = [r["frame_index"] for r in frames(records)]
    assert idx == sorted(set(idx)), "frame indexes must keep increasing across reconnects"
    end = records[-1]
    assert end["event"] == "end" and end["reason"] == "sigint" and end["written"] == len(idx)
    # Memory stays bounded over three reconnects (a generous bound: no per-reconnect leak of
    # decoders or frame queues, which would be tens of MiB each at this size).
    assert rss and max(rss) - rss[0] < 150, f"RSS grew from {rss[0]:.0f} to {max(rss):.0f} MiB"


def test_no_publisher_at_start_then_stall_then_new_resolution(tmp_path, rtsp_server):
    """The server is up but its mount has no publisher (the camera's encoder is not running),
    then publishes at 160x120, stalls (publisher gone, server still up and accepting
    connections that carry nothing), and comes back after a restart at 320x240. The reader
    backs off while the server sends nothing, and the video keeps its first size and plays."""
    server = rtsp_server(size=SMALL).start(publish=False)
    log, out = tmp_path / "log.jsonl", tmp_path / "out.mp4"
    child = Child(tmp_path, "live", "--source", server.url, *FAST_NET, *ENGINE_ONLY, "--log", str(log),
                  "--out", str(out), "--duration", "120")
    try:
        wait_for("failed connects to an empty mount", lambda: count_status(log, "connect_failed") >= 2, child)
        server.publish()
        wait_for("frames once the publisher starts", lambda: _n_frames(log) >= 10, child, timeout=40)
        failed_before = count_status(log, "connect_failed")
        server.stop_publisher()  # the server stays up and says nothing
        wait_for("the stall to be noticed", lambda: count_status(log, "lost") >= 1, child, timeout=30)
        wait_for("retries with backoff while the server sends nothing",
                 lambda: count_status(log, "connect_failed") >= failed_before + 2, child, timeout=40)
        # (rtsp-server-perl keeps a mount whose publisher left and refuses a new one: restart.)
        server.kill()
        server.start(publish=False)
        server.publish(size=(320, 240))
        wait_for("reconnect", lambda: count_status(log, "reconnected") >= 1, child, timeout=60)
        before = _n_frames(log)
        wait_for("frames at the new size", lambda: _n_frames(log) >= before + 10, child, timeout=30)
        child.proc.send_signal(15)
        assert child.wait(timeout=15) == 143, child.stderr
    finally:
        child.kill()
    records = check_complete_log(log)
    st = statuses(records)
    first_ok = st.index("connected")
    assert first_ok >= 2 and set(st[:first_ok]) == {"connect_failed"}, st
    i_lost = st.index("lost")
    i_back = st.index("reconnected")
    assert i_lost < i_back and st[i_lost + 1:i_back].count("connect_failed") >= 2, st
    silent = [r for r in records if r.get("status") == "connect_failed" and r["reason"] == "no frames after opening"]
    assert silent, "a server that accepts but sends nothing counts as a failed attempt"
    back = next(r for r in records if r.get("status") == "reconnected")
    assert back["outage_s"] > 2.0  # the outage lasts until frames flow again
    change = [r for r in records if r.get("status") == "resolution_changed"]
    assert len(change) == 1 and change[0]["old_size"] == [160, 120] and change[0]["new_size"] == [320, 240]
    _backoffs_are_capped_and_growing(records)
    end = records[-1]
    assert end["reason"] == "sigterm" and end["exit_code"] == 143
    assert probe_frames(out) == end["written"] == len(frames(records))


def test_camera_that_never_comes_up_gives_up_with_exit_3(tmp_path, rtsp_server):
    server = rtsp_server().start(publish=False)  # a server that answers, with nothing to show
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "live", "--source", server.url, *FAST_NET, *ENGINE_ONLY, "--log", str(log),
                  "--max-retries", "3", "--out", str(tmp_path / "out.mp4"))
    assert child.wait(timeout=60) == 3, child.stderr
    records = check_complete_log(log)
    failed = [r for r in records if r.get("status") == "connect_failed"]
    assert [r["attempt"] for r in failed] == [1, 2, 3]
    assert [r["retry_in_s"] for r in failed] == [0.5, 1.0, 2.0]
    assert statuses(records)[-1] == "gave_up"
    gave_up = records[-2]  # --max-retries 3: the first attempt and 3 retries
    assert gave_up["attempts"] == 4 and gave_up["retries"] == 3
    assert gave_up["message"] == "no connection after 4 attempts (the first and 3 retries)"
    assert records[-1]["exit_code"] == 3 and records[-1]["written"] == 0
    errors = [line for line in child.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "never connected" in errors[0], child.stderr
    assert "Traceback" not in child.stderr
    assert not (tmp_path / "out.mp4").exists()  # no empty video left behind


def test_monitor_one_camera_down_the_other_unaffected(tmp_path, rtsp_server):
    cam1 = rtsp_server(mount="cam1", size=SMALL).start()
    cam2 = rtsp_server(mount="cam2", size=SMALL).start()
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "monitor", cam1.url, cam2.url, *FAST_NET, *ENGINE_ONLY, "--log", str(log),
                  "--stats-interval", "2", "--duration", "120")
    try:
        wait_for("frames from both cameras",
                 lambda: _n_frames(log, cam1.url) >= 10 and _n_frames(log, cam2.url) >= 10, child, timeout=40)
        cam1.kill()
        wait_for("cam1 lost", lambda: count_status(log, "lost", cam1.url) >= 1, child, timeout=20)
        time.sleep(3)
        cam1.start()
        wait_for("cam1 back", lambda: count_status(log, "reconnected", cam1.url) >= 1, child, timeout=40)
        before = _n_frames(log, cam1.url)
        wait_for("cam1 frames again", lambda: _n_frames(log, cam1.url) >= before + 10, child, timeout=20)
        child.proc.send_signal(2)
        assert child.wait(timeout=15) == 130, child.stderr
    finally:
        child.kill()
    records = check_complete_log(log)
    assert statuses(records, cam2.url) == ["connected", "ended"], "cam2 must never notice cam1's outage"
    lost = next(r for r in records if r.get("status") == "lost" and r["source"] == cam1.url)
    back = next(r for r in records if r.get("status") == "reconnected" and r["source"] == cam1.url)
    i_lost, i_back = records.index(lost), records.index(back)
    during = [r for r in records[i_lost:i_back] if r["event"] == "frame" and r["source"] == cam2.url]
    assert len(during) >= 10, "cam2 must keep producing frames while cam1 is down"
    from datetime import datetime

    times = [datetime.fromisoformat(r["time"]).timestamp() for r in frames(records, cam2.url)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 3.0, f"cam2 stalled for {max(gaps):.1f} s during cam1's outage"
    assert records[-1]["reason"] == "sigint"


def test_camera_with_keyframes_17_s_apart_connects_with_default_settings(tmp_path, rtsp_server):
    """libx264's default GOP (a keyframe every 250 frames) at 15 fps, as "smart codec" cameras
    send: joining after a keyframe, the first decodable frame is ~14 s away, longer than the
    default --read-timeout (5 s) and --watchdog (10 s). Data arrives all along, so that wait is
    not an outage: no network options, and the camera connects once and streams. A reader told
    to wait only 2 s for that keyframe fails with a reason that says so."""
    from streamcap.capture import SourceConfig, SourceReader

    server = rtsp_server(size=SMALL, gop=250, fps=15).start()
    time.sleep(3)  # the publisher's first keyframe is gone: the next is 16.7 s after it
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "monitor", server.url, *ENGINE_ONLY, "--log", str(log), "--duration", "120")
    events: list[tuple[str, dict]] = []
    impatient = SourceReader(SourceConfig(server.url, rtsp_transport="udp", first_frame_timeout_s=2, max_retries=0),
                             on_status=lambda s, st, **k: events.append((st, k)))
    impatient.start()
    try:
        wait_for("frames after the first keyframe", lambda: _n_frames(log) >= 30, child, timeout=60)
        child.proc.send_signal(2)
        assert child.wait(timeout=15) == 130, child.stderr
    finally:
        child.kill()
        impatient.stop()
        impatient.join(timeout=15)
    records = check_complete_log(log)
    assert statuses(records) == ["connected", "ended"], statuses(records)  # no connect_failed, lost or stalled
    idx = [r["frame_index"] for r in frames(records)]
    assert idx == sorted(set(idx)) and len(idx) >= 30
    assert records[-1]["reason"] == "sigint"
    gave_up = [k for st, k in events if st == "gave_up"]
    assert gave_up and gave_up[0]["reason"].startswith("no decodable frame within 2 s"), events
    assert "no keyframe" in gave_up[0]["reason"]


def test_rtsp_over_tcp_server_killed_and_restarted_reconnects(tmp_path, gst_rtsp_server):
    """RTP interleaved in the RTSP/TCP connection (``--rtsp-transport tcp``) from a server that
    offers nothing else: the camera reboots; the reader notices the closed connection, retries
    with backoff while it is down, and resumes on the same address."""
    server = gst_rtsp_server(protocols="tcp").start()
    log = tmp_path / "log.jsonl"
    child = Child(tmp_path, "live", "--source", server.url, "--rtsp-transport", "tcp", "--read-timeout", "2",
                  "--open-timeout", "3", "--watchdog", "4", *ENGINE_ONLY, "--log", str(log), "--duration", "120")
    try:
        wait_for("first frames", lambda: _n_frames(log) >= 10, child, timeout=30)
        server.kill()
        wait_for("loss", lambda: count_status(log, "lost") >= 1, child, timeout=20)
        wait_for("a failed retry while the camera is down", lambda: count_status(log, "connect_failed") >= 1,
                 child, timeout=20)
        server.start()
        wait_for("reconnect", lambda: count_status(log, "reconnected") >= 1, child, timeout=40)
        before = _n_frames(log)
        wait_for("frames after reconnecting", lambda: _n_frames(log) >= before + 10, child, timeout=20)
        child.proc.send_signal(2)
        assert child.wait(timeout=15) == 130, child.stderr
    finally:
        child.kill()
    records = check_complete_log(log)
    st = statuses(records)
    assert st[0] == "connected" and st.count("lost") == 1 and st.count("reconnected") == 1, st
    i_lost, i_back = st.index("lost"), st.index("reconnected")
    assert set(st[i_lost + 1:i_back]) == {"connect_failed"}, st
    assert all(r["reason"] == "cannot open" for r in records if r.get("status") == "connect_failed")
    _backoffs_are_capped_and_growing(records)
    idx = [r["frame_index"] for r in frames(records)]
    assert idx == sorted(set(idx)), "frame indexes must keep increasing across reconnects"
    assert records[-1]["reason"] == "sigint"
