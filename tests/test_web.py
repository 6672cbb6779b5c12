"""The web dashboard's server: live tiles, history, files, and every security rule (item 7)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamcap.errors import BadInputError
from streamcap.types import Caption, Frame, FrameResult
from streamcap.web.auth import parse_bind, resolve_token
from streamcap.web.history import History
from streamcap.web.live import LiveHub
from streamcap.web.server import WebApp, WebServer, parse_since

TOKEN = "s3cret-token-123"
CAM_URL = "rtsp://admin:hunter2@10.0.0.5:554/stream1"


def frame_result(source: str, index: int, level: int, caption: str | None = None) -> FrameResult:
    image = np.full((48, 64, 3), level, np.uint8)
    frame = Frame(source=source, index=index, pts_s=index / 10, wall_ts=0.0, image=image)
    cap = Caption(text=caption, raw_text=caption, score=-1.0, frame_index=index) if caption else None
    return FrameResult(frame=frame, detections=None, caption=cap)


class Server:
    def __init__(self, app: WebApp) -> None:
        self.server = WebServer(app, "127.0.0.1", 0).start()
        self.port = self.server.port

    def get(self, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def events(tmp_path: Path) -> Path:
    d = tmp_path / "events"
    (d / "cam1").mkdir(parents=True)
    cv2.imwrite(str(d / "cam1" / "0001.jpg"), np.full((8, 8, 3), 200, np.uint8))
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8\xffSECRET")
    (tmp_path / "secret.txt").write_text("SECRET")
    os.symlink(tmp_path / "secret.jpg", d / "link.jpg")
    return d


def make_log(tmp_path: Path, events: Path) -> Path:
    log = tmp_path / "run.jsonl"
    records = [
        {"event": "source_status", "source": "cam1", "time": "2026-01-01T00:00:00.000+00:00", "status": "connected"},
        {"event": "caption", "source": "cam1", "time": "2026-01-01T00:00:01.000+00:00", "raw": "a dog",
         "shown": "a dog on a sofa", "changed": True, "snapshot": "cam1/0001.jpg"},
        {"event": "caption", "source": "cam1", "time": "2026-01-01T00:00:02.000+00:00", "raw": "a dog",
         "shown": "a dog on a sofa", "changed": False},
        {"event": "alert", "source": "cam1", "time": "2026-01-01T00:00:03.000+00:00", "rule": "dog",
         "message": "dog seen", "snapshot": str(events / "cam1" / "0001.jpg")},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "cut off')
    return log


@pytest.fixture
def served(tmp_path: Path, events: Path):
    hub = LiveHub([CAM_URL, "cam2"])
    app = WebApp(hub=hub, history=History(log=make_log(tmp_path, events), events_dir=events), events_dir=events,
                 search=lambda text, camera, since, limit, order: [{"text": text, "order": order, "since": since}],
                 metrics=lambda: "streamcap_frames_total 3\n")
    srv = Server(app)
    yield srv, hub, app
    srv.close()


# -- binding and tokens ------------------------------------------------------------------------------
def test_parse_bind_defaults_to_loopback():
    assert parse_bind("8080") == ("127.0.0.1", 8080)
    assert parse_bind("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_bind("[::1]:81") == ("::1", 81)
    with pytest.raises(BadInputError):
        parse_bind("host:http")


def test_non_loopback_needs_a_token(tmp_path: Path):
    assert resolve_token("127.0.0.1", None, None) is None
    assert resolve_token("localhost", None, None) is None
    with pytest.raises(BadInputError, match="needs --auth-token"):
        resolve_token("0.0.0.0", None, None)
    assert resolve_token("0.0.0.0", TOKEN, None) == TOKEN
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert resolve_token("192.168.1.2", None, f) == TOKEN
    with pytest.raises(BadInputError):
        resolve_token("0.0.0.0", "short", None)


def test_cli_refuses_public_bind_without_token(tmp_path: Path, events: Path):
    from typer.testing import CliRunner

    from streamcap.cli.app import app

    for args in (["serve", "--events-dir", str(events), "--bind", "0.0.0.0:0"], ["demo", "--bind", "0.0.0.0:0"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "needs --auth-token" in res.output


def test_every_route_needs_the_token(tmp_path: Path, events: Path):
    app = WebApp(hub=LiveHub(["cam1"]), history=History(log=make_log(tmp_path, events), events_dir=events),
                 events_dir=events, metrics=lambda: "m 1\n", token=TOKEN, search=lambda *a: [])
    srv = Server(app)
    try:
        routes = ["/", "/api/state", "/api/timeline", "/api/search?q=dog", "/metrics", "/events/cam1/0001.jpg",
                  "/video/0.mjpg", "/frame/0.jpg", "/nothing"]
        for route in routes:
            resp, _ = srv.get(route)
            assert resp.status == 401, route
            resp, _ = srv.get(route, {"Authorization": "Bearer wrong-token-000"})
            assert resp.status == 401, route
        resp, _ = srv.get("/api/state", {"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
        resp, _ = srv.get("/events/cam1/0001.jpg", {"Authorization": f"Bearer {TOKEN}"})
        assert resp.status == 200
        # the browser: ?token= sets a cookie and sends it to the address without the token
        resp, _ = srv.get(f"/?token={TOKEN}")
        assert resp.status == 303 and resp.getheader("Location") == "/"
        cookie = resp.getheader("Set-Cookie")
        assert "HttpOnly" in cookie
        resp, data = srv.get("/", {"Cookie": cookie.split(";")[0]})
        assert resp.status == 200 and b"<title>streamcap" in data
        resp, _ = srv.get("/api/state", {"Cookie": "streamcap_token=nope"})
        assert resp.status == 401
        resp, _ = srv.get("/api/demo", method="POST", body=b"x", headers={"Content-Length": "1"})
        assert resp.status == 401
    finally:
        srv.close()


def test_the_token_is_never_logged(tmp_path: Path, events: Path, caplog):
    app = WebApp(history=History(events_dir=events), events_dir=events, token=TOKEN)
    srv = Server(app)
    try:
        with caplog.at_level(logging.DEBUG, logger="streamcap"):
            srv.get(f"/api/state?token={TOKEN}")
            srv.get("/api/state", {"Authorization": f"Bearer {TOKEN}"})
        assert caplog.records  # requests are logged (at debug level) ...
        assert TOKEN not in caplog.text  # ... without the token
    finally:
        srv.close()


# -- files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/events/../secret.jpg", "/events/%2e%2e/secret.jpg", "/events/%2E%2E%2Fsecret.jpg", "/events/cam1/../../secret.jpg",
    "/events//etc/passwd", "/events/%2Fetc%2Fpasswd", "/events/link.jpg", "/events/cam1", "/events/cam1/%00.jpg",
    "/events/..%5csecret.jpg", "/events/../secret.txt",
])
def test_no_file_outside_the_events_dir(served, path):
    srv, _, _ = served
    resp, data = srv.get(path)
    assert resp.status == 404
    assert b"SECRET" not in data


def test_events_file_served(served):
    srv, _, _ = served
    resp, data = srv.get("/events/cam1/0001.jpg")
    assert resp.status == 200 and resp.getheader("Content-Type") == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)


# -- state, timeline, search, metrics ----------------------------------------------------------------------
def test_state_redacts_camera_credentials(served):
    srv, hub, _ = served
    hub.on_record({"event": "source_status", "source": "rtsp://***@10.0.0.5:554/stream1", "status": "lost"})
    hub.on_record({"event": "frame", "source": "cam2", "latency_ms": 42.0})
    hub.on_record({"event": "caption", "source": "cam2", "shown": "a man riding a bike", "changed": True})
    resp, data = srv.get("/api/state")
    assert b"hunter2" not in data and b"admin" not in data
    cams = {c["name"]: c for c in json.loads(data)["cameras"]}
    assert cams["rtsp://***@10.0.0.5:554/stream1"]["status"] == "lost"
    assert cams["rtsp://***@10.0.0.5:554/stream1"]["outage_s"] is not None
    assert cams["cam2"]["status"] == "connected" and cams["cam2"]["latency_ms"] == 42.0
    assert cams["cam2"]["caption"] == "a man riding a bike"
    hub.on_record({"event": "source_status", "source": "rtsp://***@10.0.0.5:554/stream1", "status": "reconnected"})
    cams = {c["name"]: c for c in json.loads(srv.get("/api/state")[1])["cameras"]}
    assert cams["rtsp://***@10.0.0.5:554/stream1"]["status"] == "connected"
    assert cams["rtsp://***@10.0.0.5:554/stream1"]["outage_s"] is None


def test_timeline_from_the_log(served, tmp_path: Path):
    srv, _, _ = served
    entries = json.loads(srv.get("/api/timeline?camera=cam1")[1])["entries"]
    assert [(e["kind"], e["text"]) for e in entries] == [("alert", "dog: dog seen"), ("caption", "a dog on a sofa")]
    assert all(e["snapshot"] == "/events/cam1/0001.jpg" for e in entries)
    assert srv.get(entries[0]["snapshot"])[0].status == 200
    # the log grows: the next read picks up the line that was cut off, once complete
    with open(tmp_path / "run.jsonl", "a") as f:
        f.write('", "x": 1}\n' + json.dumps({"event": "caption", "source": "cam1", "time": "2026-01-01T00:00:04.000+00:00",
                                               "shown": "a cat", "changed": True}) + "\n")
    entries = json.loads(srv.get("/api/timeline?camera=cam1")[1])["entries"]
    assert entries[0]["text"] == "a cat" and len(entries) == 3


def test_search_and_metrics_routes(served):
    srv, _, _ = served
    body = json.loads(srv.get("/api/search?q=dog+on+sofa&order=best&since=2h")[1])
    assert body["results"] == [{"text": "dog on sofa", "order": "best", "since": 7200.0}]
    assert "error" in json.loads(srv.get("/api/search?q=dog&since=yesterday")[1])
    resp, data = srv.get("/metrics")
    assert resp.status == 200 and data == b"streamcap_frames_total 3\n"


def test_parse_since():
    assert parse_since("90") == 90 and parse_since("30m") == 1800 and parse_since("1d") == 86400
    assert parse_since("") is None
    with pytest.raises(ValueError):
        parse_since("2 hours")


# -- live frames -------------------------------------------------------------------------------------------
def test_frames_kept_and_encoded_only_while_watched():
    hub = LiveHub(["cam1"])
    result = frame_result("cam1", 0, 10)
    assert not hub.wants_image(result)
    hub(result, result.frame.image)
    assert hub.cameras[0].image is None and hub.encoded == 0
    cam = hub.cameras[0]
    with hub.watching(cam):
        assert hub.wants_image(result)
        hub(result, result.frame.image)
        seq, jpeg = hub.next_jpeg(cam, 0, timeout=1)
        again = hub.next_jpeg(cam, 0, timeout=1)  # a second viewer: the same JPEG, not encoded again
        assert again == (seq, jpeg) and hub.encoded == 1
    assert cam.image is None and not hub.wants_image(result)


def test_mjpeg_stream_changes_and_a_stalled_viewer_never_blocks_the_camera(served):
    srv, hub, app = served
    app.max_view_fps = 0  # no pacing: every new frame goes out
    stop = threading.Event()
    fed = []

    def camera():
        i = 0
        while not stop.is_set():
            r = frame_result("cam2", i, (i * 40) % 250)
            hub(r, r.frame.image)
            fed.append(i)
            i += 1
            stop.wait(0.01)

    t = threading.Thread(target=camera, daemon=True)
    t.start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/video/1.mjpg")
    resp = conn.getresponse()
    assert resp.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    levels = set()
    for _ in range(4):
        assert resp.fp.readline() == b"--frame\r\n"
        headers = {}
        while (line := resp.fp.readline()) != b"\r\n":
            k, v = line.decode().split(":", 1)
            headers[k.strip().lower()] = v.strip()
        jpeg = resp.fp.read(int(headers["content-length"]))
        resp.fp.readline()
        levels.add(int(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean() // 10))
    assert len(levels) > 1  # the picture changes
    # The viewer stops reading (its socket buffer fills); the camera goes on delivering frames.
    before = len(fed)
    for _ in range(2000):
        r = frame_result("cam2", 0, 1)
        hub(r, r.frame.image)  # from this thread: would hang if a viewer could block the writer
    assert hub.cameras[1].viewers == 1
    stop.set()
    t.join(5)
    assert len(fed) >= before and not t.is_alive()
    conn.close()


def test_token_kept_out_of_the_logged_command_line():
    from streamcap.web.auth import redact_argv

    argv = ["monitor", "rtsp://cam", "--serve", "0.0.0.0:80", "--auth-token", TOKEN, f"--auth-token={TOKEN}"]
    assert TOKEN not in " ".join(redact_argv(argv))
    assert redact_argv(argv)[:5] == argv[:5]


def test_monitor_refuses_public_serve_without_token_before_any_camera():
    from typer.testing import CliRunner

    from streamcap.cli.app import app

    res = CliRunner().invoke(app, ["monitor", "rtsp://127.0.0.1:9/none", "--serve", "0.0.0.0:0", "--no-segment",
                                   "--no-caption"])
    assert res.exit_code == 2 and "needs --auth-token" in res.output
    res = CliRunner().invoke(app, ["monitor", "rtsp://127.0.0.1:9/none", "--auth-token", TOKEN, "--no-segment"])
    assert res.exit_code == 2 and "go with --serve" in res.output


def test_frames_drawn_only_when_a_viewer_will_get_them():
    """The writer asks the tap whether to draw a frame: not while nobody watches, and not more
    often than the hub's max_fps while someone does."""
    from streamcap.tap import RecordTap

    hub = LiveHub(["cam1", "cam2"], max_fps=0.001)  # one frame per ~1000 s: only the first is due
    tap = RecordTap()
    tap.subscribe_frames(hub)
    first, second, other = frame_result("cam1", 0, 10), frame_result("cam1", 1, 20), frame_result("cam2", 0, 30)
    assert not tap.wants_image(first)
    with hub.watching(hub.cameras[0]):
        assert tap.wants_image(first) and not tap.wants_image(other)
        tap.on_frame(first, first.frame.image)
        assert not tap.wants_image(second)  # not due yet
        tap.on_frame(second, second.frame.image)  # drawn for something else: not kept
        assert hub.next_jpeg(hub.cameras[0], 0, timeout=1)[0] == 1


def test_wide_frames_scaled_down_for_viewers():
    hub = LiveHub(["cam1"], max_width=32)
    cam = hub.cameras[0]
    with hub.watching(cam):
        r = frame_result("cam1", 0, 100)
        hub(r, r.frame.image)  # 64x48
        _, jpeg = hub.next_jpeg(cam, 0, timeout=1)
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (24, 32, 3)


def test_serve_command_history_and_search(tmp_path: Path, events: Path):
    """``streamcap serve`` on a finished run's log and events: timeline, snapshots, search."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import REPO, free_port

    log = make_log(tmp_path, events)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamcap", "serve", "--events-dir", str(events), "--log", str(log),
                             "--bind", str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                state = json.loads(urllib.request.urlopen(base + "/api/state", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        assert state == {"cameras": [{"index": None, "name": "cam1", "status": "history", "live": False,
                                      "caption": None, "outage_s": None}], "live": False}
        found = json.loads(urllib.request.urlopen(base + "/api/search?q=sofa", timeout=10).read())["results"]
        rows = [(r["camera"], r["text"], r["snapshot"]) for r in found]
        assert ("cam1", "a dog on a sofa", "/events/cam1/0001.jpg") in rows  # the change, with its snapshot
        assert {r[1] for r in rows} == {"a dog on a sofa"}
        assert urllib.request.urlopen(base + "/api/timeline?camera=cam1", timeout=10).status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize("path", ["/video/1.mjpg", "/frame/1.jpg", "/", "/api/state", "/api/timeline",
                                  "/api/search?q=dog", "/metrics", "/events/cam1/0001.jpg"])
def test_head_answers_headers_only(served, path):
    """HEAD on any route, the stream included: the GET's status and headers, no body, no frame
    drawn or encoded, and the connection can ask again."""
    srv, hub, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for _ in range(2):  # the second request on the same connection shows nothing was left to read
        conn.request("HEAD", path)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == b""
        assert resp.getheader("Content-Type").startswith(
            "multipart/x-mixed-replace" if path.endswith(".mjpg") else "image/jpeg" if path.endswith(".jpg")
            else "text/html" if path == "/" else "text/plain" if path == "/metrics" else "application/json")
    conn.close()
    assert hub.encoded == 0 and all(c.viewers == 0 for c in hub.cameras)
