"""The webhook's snapshot: its address on the dashboard, its bytes, both or neither
(``--webhook-snapshot``, ``--public-url``, or the address of ``--serve``)."""

from __future__ import annotations

import base64
import http.client
import urllib.parse

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_CLIP, read_jsonl
from streamcap.alerts.delivery import WebhookDelivery
from streamcap.capture import SourceConfig
from streamcap.cli import app
from streamcap.cli.notify import notify_tap
from streamcap.tap import RecordTap
from streamcap.web.wiring import start_dashboard
from test_alerts_delivery import Receiver, alert, wait_for

runner = CliRunner()


def post_for(mode: str, base: str | None, jpeg) -> dict:
    rx = Receiver()
    hook = WebhookDelivery(f"http://127.0.0.1:{rx.port}/hook", snapshot_mode=mode, snapshot_base_url=base,
                           snapshot_path=lambda name: jpeg).start()
    try:
        hook.on_record(alert(snapshot="cam1/7 a.jpg"))
        assert wait_for(lambda: rx.posts)
    finally:
        hook.close()
        rx.close()
    return rx.posts[0]["body"]


@pytest.mark.parametrize("mode, base, url, data", [
    ("auto", "http://nvr.lan:8080/events/", True, False),
    ("auto", None, False, True),
    ("url", "http://nvr.lan:8080/events", True, False),
    ("bytes", "http://nvr.lan:8080/events", False, True),
    ("both", "http://nvr.lan:8080/events", True, True),
    ("none", "http://nvr.lan:8080/events", False, False),
])
def test_each_mode_sends_what_it_says(tmp_path, mode, base, url, data):
    jpeg = tmp_path / "snap.jpg"
    jpeg.write_bytes(b"\xff\xd8 jpeg \xff\xd9")
    body = post_for(mode, base, jpeg)
    assert body["snapshot"] == "cam1/7 a.jpg" and body["rule"] == "object:person"
    assert body.get("snapshot_url") == ("http://nvr.lan:8080/events/cam1/7%20a.jpg" if url else None)
    assert (base64.b64decode(body["snapshot_jpeg"]) == jpeg.read_bytes()) if data else "snapshot_jpeg" not in body


def test_dashboard_address_goes_to_the_webhook_and_serves_the_snapshot(tmp_path):
    """monitor --serve with a webhook: the POST links the snapshot on the dashboard, and that
    link answers with the snapshot's bytes."""
    events = tmp_path / "events"
    (events / "cam1").mkdir(parents=True)
    ok, buf = cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))
    (events / "cam1" / "0001.jpg").write_bytes(buf.tobytes())
    rx = Receiver()
    sources = [SourceConfig("rtsp://127.0.0.1:9/cam1")]
    tap = notify_tap({"alert_object": ["person"], "webhook": f"http://127.0.0.1:{rx.port}/hook", "serve": "0"},
                     sources, RecordTap())
    dash = start_dashboard(tap, "127.0.0.1:0", None, None, sources, None, events, index=False)
    try:
        tap.write("alert", source="rtsp://127.0.0.1:9/cam1", rule="object:person", camera="cam1",
                  snapshot="cam1/0001.jpg")
        assert wait_for(lambda: rx.posts)
        body = rx.posts[0]["body"]
        assert body["snapshot_url"] == f"http://127.0.0.1:{dash.server.port}/events/cam1/0001.jpg"
        assert "snapshot_jpeg" not in body  # auto: the address, now that there is one
        parts = urllib.parse.urlsplit(body["snapshot_url"])
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == buf.tobytes()
        conn.close()
    finally:
        tap.notifier.close()
        dash.close()
        rx.close()


def test_file_run_with_public_url_links_each_alert_snapshot(tmp_path):
    log, events = tmp_path / "run.jsonl", tmp_path / "events"
    rx = Receiver()
    try:
        res = runner.invoke(app, [
            "file", str(SAMPLE_CLIP), "--no-segment", "--log", str(log), "--events-dir", str(events),
            "--alert-caption", "a", "--alert-cooldown", "0", "--webhook", f"http://127.0.0.1:{rx.port}/hook",
            "--public-url", "https://nvr.example:8443/cams/", "--webhook-snapshot", "both"])
        assert res.exit_code == 0, res.output
        alerts = [r for r in read_jsonl(log) if r["event"] == "alert"]
        assert alerts and wait_for(lambda: len(rx.posts) == len(alerts))
    finally:
        rx.close()
    by_frame = {p["body"]["frame_index"]: p["body"] for p in rx.posts}
    for a in alerts:
        body = by_frame[a["frame_index"]]
        assert body["snapshot_url"] == "https://nvr.example:8443/cams/events/" + urllib.parse.quote(a["snapshot"])
        assert base64.b64decode(body["snapshot_jpeg"]) == (events / a["snapshot"]).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--alert-object", "person", "--webhook", "http://127.0.0.1:9/h", "--webhook-snapshot", "url"],
     "--webhook-snapshot url needs an address"),
    (["--alert-object", "person", "--webhook", "http://127.0.0.1:9/h", "--webhook-snapshot", "jpeg"],
     "--webhook-snapshot must be one of"),
    (["--webhook-snapshot", "bytes"], "--webhook-snapshot goes with --webhook"),
    (["--alert-object", "person", "--webhook", "http://127.0.0.1:9/h", "--public-url", "nvr.lan:8080"],
     "--public-url must be an http"),
])
def test_bad_snapshot_options(args, message):
    res = runner.invoke(app, ["monitor", "rtsp://127.0.0.1:9/x", "--no-segment", "--no-caption", *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
