"""Delivery of alerts, captions and status: a real MQTT broker (Debian's mosquitto, started on
loopback) and a local HTTP receiver; dead endpoints never hold up the caller; secrets stay out of
every log line and record."""

from __future__ import annotations

import base64
import getpass
import http.server
import json
import logging
import shutil
import socket
import subprocess
import threading
import time

import pytest

from streamcap.alerts.delivery import WebhookDelivery, redact_secret_args, safe_url
from streamcap.alerts.mqtt import MqttDelivery, camera_slug, parse_host

CAM = "rtsp://***@cam1/stream"
SLUG = "cam1_stream"
PASSWORD = "s3cret-Pw-771"
needs_mosquitto = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs Debian's mosquitto (apt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=15.0):
    """Poll until cond() is true; the deadline only ends a test that failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def alert(rule="object:person", snapshot=None, frame_index=7):
    return {"schema": 2, "event": "alert", "time": "2026-01-01T00:00:00.000+00:00", "source": CAM,
            "rule": rule, "camera": CAM, "frame_index": frame_index, "pts_s": 0.7, "snapshot": snapshot,
            "matched": {"kind": "object", "label": "person", "count": 1, "objects": []}}


class Reports(list):
    def __call__(self, event, source=None, **fields):
        self.append({"event": event, "source": source, **fields})


@pytest.fixture
def broker(tmp_path):
    port = free_port()
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "streamcap", PASSWORD], check=True,
                   capture_output=True)
    pw.chmod(0o600)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
                    f"persistence false\nuser {getpass.getuser()}\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    assert wait_for(up, 10), proc.stdout.read1(4096) if proc.poll() is not None else "broker did not start"
    yield port
    proc.terminate()
    proc.wait(5)


class Subscriber:
    def __init__(self, port):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set("streamcap", PASSWORD)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), m.retain))
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def topic(self, topic):
        return [(p, r) for t, p, r in self.messages if t == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@needs_mosquitto
def test_mqtt_discovery_status_caption_and_alert(broker, caplog):
    caplog.set_level(logging.DEBUG)
    reports = Reports()
    early = Subscriber(broker)
    mq = MqttDelivery("127.0.0.1", broker, username="streamcap", password=PASSWORD, cameras=[CAM],
                      report=reports).start()
    try:
        mq.on_record({"schema": 2, "event": "source_status", "source": CAM, "status": "connected"})
        mq.on_record({"schema": 2, "event": "caption", "source": CAM, "frame_index": 3, "shown": "a dog on a sofa",
                      "raw": "a dog on a sofa", "changed": True})
        mq.on_record(alert())
        mq.on_record({"event": "frame", "source": CAM, "frame_index": 3})  # not for MQTT
        assert wait_for(lambda: early.topic(f"streamcap/{SLUG}/alert"))
        payload = json.loads(early.topic(f"streamcap/{SLUG}/alert")[0][0])
        assert payload["rule"] == "object:person" and payload["frame_index"] == 7
        assert json.loads(early.topic(f"streamcap/{SLUG}/caption")[0][0])["shown"] == "a dog on a sofa"
        assert json.loads(early.topic(f"streamcap/{SLUG}/status")[0][0])["status"] == "connected"
        # a subscriber that comes later gets the retained discovery, availability, caption and status
        late = Subscriber(broker)
        topics = {
            "sensor": f"homeassistant/sensor/streamcap_{SLUG}/caption/config",
            "binary": f"homeassistant/binary_sensor/streamcap_{SLUG}/alert/config",
        }
        assert wait_for(lambda: all(late.topic(t) for t in topics.values())
                        and late.topic(f"streamcap/{SLUG}/caption") and late.topic("streamcap/available"))
        sensor = json.loads(late.topic(topics["sensor"])[0][0])
        binary = json.loads(late.topic(topics["binary"])[0][0])
        assert all(retained for t in topics.values() for _, retained in late.topic(t))
        assert sensor["state_topic"] == f"streamcap/{SLUG}/caption" and "value_json.shown" in sensor["value_template"]
        assert binary["state_topic"] == f"streamcap/{SLUG}/alert" and binary["off_delay"] == 30
        assert sensor["device"]["identifiers"] == binary["device"]["identifiers"] == [f"streamcap_{SLUG}"]
        assert sensor["unique_id"] != binary["unique_id"]
        assert late.topic("streamcap/available")[-1][0] == "online"
        assert late.topic(f"streamcap/{SLUG}/alert") == []  # alerts are events, not retained
        late.close()
    finally:
        mq.close()
        early.close()
    assert mq.stats()["sent"] >= 6 and mq.stats()["failed"] == mq.stats()["dropped"] == 0
    assert reports == []
    assert PASSWORD not in caplog.text


@needs_mosquitto
def test_mqtt_wrong_password_fails_without_showing_it(broker, caplog):
    caplog.set_level(logging.DEBUG)
    reports = Reports()
    mq = MqttDelivery("127.0.0.1", broker, username="streamcap", password="wrong-" + PASSWORD, report=reports,
                      attempts=1, connect_wait_s=0.2).start()
    try:
        mq.on_record(alert())
        assert wait_for(lambda: mq.stats()["failed"] >= 1)
    finally:
        mq.close(timeout_s=0.5)
    assert reports and reports[0]["event"] == "delivery_failed" and reports[0]["sink"] == "mqtt"
    assert "not connected" in reports[0]["error"]
    assert PASSWORD not in caplog.text + json.dumps(reports)


def test_dead_broker_never_blocks_the_caller_and_counts_drops():
    reports = Reports()
    mq = MqttDelivery("127.0.0.1", free_port(), max_queue=5, attempts=2, backoff_s=0.05, connect_wait_s=0.2,
                      report=reports).start()
    try:
        submitted = 0
        for i in range(60):
            mq.on_record({"event": "caption", "source": CAM, "frame_index": i, "shown": f"caption {i}"})
            submitted += 1
            assert mq.stats()["queued"] <= 5 + 1  # the queue is bounded (+1: the item being sent)
        stats = mq.stats()
        # 3 discovery messages and 60 captions went in; all but the queue and the one in hand were dropped
        assert stats["dropped"] >= submitted + 3 - 6
        assert any(r["event"] == "delivery_dropped" and r["sink"] == "mqtt" and r["dropped_total"] >= 1
                   for r in reports)
    finally:
        mq.close(timeout_s=0.3)
    assert mq.stats()["dropped"] >= submitted + 3 - 1 - mq.stats()["failed"]


# -- the webhook ---------------------------------------------------------------------------------

class Receiver:
    """A local HTTP server that records each POST; ``hold`` makes it hang before answering."""

    def __init__(self, status=200):
        self.posts = []
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.arrived.set()
                receiver.hold.wait(30)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


def test_webhook_posts_the_alert_with_the_snapshot(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    jpeg = tmp_path / "snap.jpg"
    jpeg.write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    rx = Receiver()
    url = f"http://hookuser:{PASSWORD}@127.0.0.1:{rx.port}/api/webhook/TOKEN9911?key=QK55"
    reports = Reports()
    hook = WebhookDelivery(url, snapshot_path=lambda name: jpeg if name == "cam1/7.jpg" else None,
                           snapshot_base_url="http://127.0.0.1:8080/events/", report=reports).start()
    try:
        hook.on_record({"event": "caption", "source": CAM, "shown": "x"})  # only alerts go to the webhook
        hook.on_record(alert(snapshot="cam1/7.jpg"))
        assert wait_for(lambda: rx.posts)
    finally:
        hook.close()
        rx.close()
    (post,) = rx.posts
    assert post["path"] == "/api/webhook/TOKEN9911?key=QK55"
    assert post["headers"]["Content-Type"] == "application/json"
    assert post["headers"]["Authorization"] == "Basic " + base64.b64encode(f"hookuser:{PASSWORD}".encode()).decode()
    body = post["body"]
    assert body["event"] == "alert" and body["rule"] == "object:person" and body["camera"] == CAM
    assert base64.b64decode(body["snapshot_jpeg"]) == jpeg.read_bytes()
    assert body["snapshot_url"] == "http://127.0.0.1:8080/events/cam1/7.jpg"
    assert hook.stats() == {"sent": 1, "failed": 0, "dropped": 0, "queued": 0}
    assert hook.display == f"http://127.0.0.1:{rx.port}/..."
    for secret in (PASSWORD, "TOKEN9911", "QK55"):
        assert secret not in caplog.text


def test_dead_webhook_fails_and_reports_without_the_url(caplog):
    caplog.set_level(logging.DEBUG)
    reports = Reports()
    hook = WebhookDelivery(f"http://127.0.0.1:{free_port()}/hook/TOKEN9911", attempts=2, backoff_s=0.01,
                           report=reports).start()
    try:
        hook.on_record(alert())
        assert wait_for(lambda: hook.stats()["failed"] == 1)
    finally:
        hook.close()
    (rep,) = reports
    assert rep["event"] == "delivery_failed" and rep["sink"] == "webhook" and rep["rule"] == "object:person"
    assert rep["source"] == CAM and rep["attempts"] == 2 and rep["error"].startswith("cannot connect")
    assert "TOKEN9911" not in caplog.text + json.dumps(reports)


def test_hanging_webhook_never_blocks_the_caller():
    rx = Receiver()
    rx.hold.clear()  # the server takes the request and never answers (until the end of the test)
    reports = Reports()
    hook = WebhookDelivery(f"http://127.0.0.1:{rx.port}/hook", max_queue=3, timeout_s=30, report=reports).start()
    try:
        hook.on_record(alert(frame_index=0))
        assert rx.arrived.wait(15)  # the first alert is in hand, hanging
        for i in range(1, 20):
            hook.on_record(alert(frame_index=i))
            assert hook.stats()["queued"] <= 3 + 1
        assert hook.stats()["queued"] == 4  # one in hand, three waiting
        assert hook.stats()["dropped"] == 20 - 4
        assert hook.stats()["sent"] == 0
        (rep,) = [r for r in reports if r["event"] == "delivery_dropped"]  # one record per 10 s, not per drop
        assert rep["dropped_total"] >= 1
    finally:
        rx.hold.set()
        hook.close(timeout_s=5)
        rx.close()
    # once the receiver answers, what was still queued goes out: the newest alerts
    assert [p["body"]["frame_index"] for p in rx.posts][-3:] == [17, 18, 19]


def test_safe_url_and_argv_redaction():
    assert safe_url("https://u:p@host.example:8123/api/webhook/SECRET?t=1") == "https://host.example:8123/..."
    assert safe_url("http://host/") == "http://host"
    argv = ["monitor", "rtsp://cam", "--webhook", "https://h/hook/SECRET", "--webhook=http://u:p@h:1/x", "--log", "l"]
    assert redact_secret_args(argv) == ["monitor", "rtsp://cam", "--webhook", "https://h/...",
                                        "--webhook=http://h:1/...", "--log", "l"]
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookDelivery("ftp://u:SECRET@h/x")


def test_topics_and_hosts():
    assert camera_slug("rtsp://***@Cam1:554/live/ch0") == "cam1_554_live_ch0"
    assert camera_slug("webcam0") == "webcam0"
    assert parse_host("broker") == ("broker", 1883)
    assert parse_host("10.0.0.2:1884") == ("10.0.0.2", 1884)
    assert parse_host("[::1]:1885") == ("::1", 1885)
    for bad in ("", ":1883", "h:0", "h:x"):
        with pytest.raises(ValueError):
            parse_host(bad)
