"""The HTTP server: the standard library's ThreadingHTTPServer, one thread per connection.

Routes (every one behind the token when one is set):
``/`` the dashboard, ``/api/state``, ``/api/timeline``, ``/api/search``, ``/video/N.mjpg`` (MJPEG),
``/frame/N.jpg``, ``/events/PATH`` (files in the events dir only), ``/metrics``, and with a demo
``/demo``, ``POST /api/demo``, ``/demo/files/PATH``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from streamcap.web.auth import COOKIE, redact_token, token_ok
from streamcap.web.files import SERVED_TYPES, safe_file
from streamcap.web.history import History
from streamcap.web.live import LiveHub

log = logging.getLogger(__name__)

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None) -> float | None:
    """``90``, ``30m``, ``2h``, ``1d`` -> seconds; None when empty; ValueError otherwise."""
    if not text:
        return None
    m = _SINCE_RE.match(text)
    if not m:
        raise ValueError(f"since wants a number of seconds or 30m, 2h, 1d; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WebApp:
    """What the server serves; every part is optional (``serve`` has no ``hub``)."""

    hub: LiveHub | None = None
    history: History | None = None
    search: Callable[..., list[dict]] | None = None  # (text, camera, since_s, limit, order) -> rows
    metrics: Callable[[], str | bytes] | None = None  # Prometheus text
    events_dir: Path | None = None
    token: str | None = None
    demo: Any = None  # streamcap.web.demo.Demo
    max_view_fps: float = 5.0  # each viewer's pace; the hub's max_fps bounds the drawing
    stopping: threading.Event = field(default_factory=threading.Event)

    def on_record(self, record: dict) -> None:
        """The record tap's subscriber: live state and timeline."""
        if self.hub is not None:
            self.hub.on_record(record)
        if self.history is not None:
            self.history.add(record)

    def state(self) -> dict:
        cams = []
        if self.hub is not None:
            cams = [dict(c, live=True) for c in self.hub.state()]
        known = {c["name"] for c in cams}
        if self.history is not None:
            for name in self.history.cameras():
                if name not in known:
                    cams.append({"index": None, "name": name, "status": "history", "live": False,
                                 "caption": None, "outage_s": None})
        return {"cameras": cams, "live": self.hub is not None}


class Handler(BaseHTTPRequestHandler):
    server_version = "streamcap"
    protocol_version = "HTTP/1.1"
    app: WebApp  # set on the subclass made by make_server

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, fmt: str, *args: Any) -> None:  # never the token, only at debug level
        log.debug("%s %s", self.address_string(), redact_token(fmt % args))

    def _send(self, code: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, obj: Any, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def send_text(self, text: str, code: int = 200, ctype: str = "text/plain; charset=utf-8") -> None:
        self._send(code, text.encode(), ctype)

    def not_found(self) -> None:
        self.send_text("not found\n", 404)

    def authorized(self, query: dict) -> bool:
        app = self.app
        if app.token is None:
            return True
        if token_ok(app.token, self.headers.get("Authorization"), self.headers.get("Cookie")):
            return True
        given = query.get("token", [None])[0]
        if given and token_ok(app.token, None, None, given) and self.command in ("GET", "HEAD"):
            # A browser's first visit: keep the token in a cookie, and take it out of the address.
            rest = {k: v for k, v in query.items() if k != "token"}
            target = urlsplit(self.path).path + ("?" + urlencode(rest, doseq=True) if rest else "")
            self._send(303, b"", "text/plain", {
                "Location": target,
                "Set-Cookie": f"{COOKIE}={app.token}; HttpOnly; SameSite=Strict; Path=/"})
            return False
        self._send(401, b"a token is needed: open this address with ?token=YOUR_TOKEN, or send "
                        b"'Authorization: Bearer YOUR_TOKEN'\n", "text/plain; charset=utf-8",
                   {"WWW-Authenticate": "Bearer"})
        return False

    # -- routes ---------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self.authorized(query):
            return
        path, app = url.path, self.app
        try:
            if path == "/" and app.demo is not None and app.hub is None and app.history is None:
                self._send(303, b"", "text/plain", {"Location": "/demo"})
            elif path == "/":
                from streamcap.web.page import DASHBOARD

                self.send_text(DASHBOARD, ctype="text/html; charset=utf-8")
            elif path == "/api/state":
                self.send_json(app.state())
            elif path == "/api/timeline":
                self.route_timeline(query)
            elif path == "/api/search":
                self.route_search(query)
            elif path == "/metrics":
                if app.metrics is None:
                    return self.not_found()
                text = app.metrics()
                self._send(200, text if isinstance(text, bytes) else text.encode(),
                           "text/plain; version=0.0.4; charset=utf-8")
            elif path.startswith("/events/"):
                self.send_file(app.events_dir, path[len("/events/"):])
            elif (m := re.fullmatch(r"/video/(\d+)\.mjpg", path)) and app.hub is not None:
                self.route_mjpeg(int(m.group(1)), query)
            elif (m := re.fullmatch(r"/frame/(\d+)\.jpg", path)) and app.hub is not None:
                self.route_frame(int(m.group(1)))
            elif app.demo is not None and path == "/demo":
                from streamcap.web.demo import DEMO_PAGE

                self.send_text(DEMO_PAGE.replace("{{LIMITS}}", app.demo.limits_text()),
                               ctype="text/html; charset=utf-8")
            elif app.demo is not None and path.startswith("/demo/files/"):
                self.send_file(app.demo.out_dir, path[len("/demo/files/"):])
            else:
                self.not_found()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not self.authorized({}):
            return
        if url.path == "/api/demo" and self.app.demo is not None:
            code, body = self.app.demo.handle(self.headers, self.rfile)
            if code >= 400:
                self.close_connection = True  # an unread body must not be taken for the next request
            self.send_json(body, code)
        else:
            self.close_connection = True
            self.not_found()

    def send_file(self, root: Path | None, requested: str) -> None:
        path = safe_file(root, requested)
        if path is None:
            return self.not_found()
        self._send(200, path.read_bytes(), SERVED_TYPES[path.suffix.lower()])

    def route_timeline(self, query: dict) -> None:
        if self.app.history is None:
            return self.send_json({"entries": []})
        camera = query.get("camera", [None])[0]
        limit = _int(query.get("limit", ["50"])[0], 50, 500)
        self.send_json({"entries": self.app.history.timeline(camera, limit)})

    def route_search(self, query: dict) -> None:
        if self.app.search is None:
            return self.send_json({"results": [], "error": "no search index (run with --log)"})
        text = query.get("q", [""])[0].strip()
        if not text:
            return self.send_json({"results": [], "error": "type some words to search for"})
        try:
            since = parse_since(query.get("since", [None])[0])
        except ValueError as err:
            return self.send_json({"results": [], "error": str(err)})
        order = query.get("order", ["newest"])[0]
        if order not in ("newest", "best"):
            order = "newest"
        camera = query.get("camera", [None])[0] or None
        limit = _int(query.get("limit", ["50"])[0], 50, 500)
        try:
            rows = self.app.search(text, camera, since, limit, order)
        except LookupError as err:
            return self.send_json({"results": [], "error": str(err)})
        except Exception as err:  # a query the index cannot parse: say so, keep serving
            return self.send_json({"results": [], "error": f"search failed: {err}"})
        self.send_json({"results": rows})

    def route_frame(self, index: int) -> None:
        hub = self.app.hub
        if index >= len(hub.cameras):
            return self.not_found()
        cam = hub.cameras[index]
        if self.command == "HEAD":  # headers only: no frame is drawn or encoded for it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return
        with hub.watching(cam):
            got = hub.next_jpeg(cam, 0, timeout=5.0)
        if got is None:
            return self.send_text("no frame yet\n", 503)
        self._send(200, got[1], "image/jpeg")

    def route_mjpeg(self, index: int, query: dict) -> None:
        """multipart/x-mixed-replace JPEGs; this viewer's pace is its own: at most max_view_fps,
        and a frame that arrives while it is still sending the last one is skipped."""
        hub, app = self.app.hub, self.app
        if index >= len(hub.cameras):
            return self.not_found()
        cam = hub.cameras[index]
        period = 1.0 / app.max_view_fps if app.max_view_fps > 0 else 0.0
        if period <= hub.period:
            period = 0.0  # the hub keeps no more frames than that: waiting for the next one paces it
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        if self.command == "HEAD":  # headers only, and the connection stays usable
            self.end_headers()
            return
        self.close_connection = True
        self.end_headers()
        seq = 0
        with hub.watching(cam):
            while not app.stopping.is_set():
                started = time.monotonic()
                got = hub.next_jpeg(cam, seq, timeout=1.0)
                if got is None:
                    continue
                seq, jpeg = got
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                self.wfile.flush()
                rest = period - (time.monotonic() - started) if period else 0.0
                if rest > 0:
                    app.stopping.wait(rest)


def _int(text: str, default: int, most: int) -> int:
    try:
        return max(1, min(int(text), most))
    except ValueError:
        return default


class WebServer:
    """The server on its own threads; ``close()`` ends every stream and stops it."""

    def __init__(self, app: WebApp, host: str, port: int) -> None:
        self.app = app
        handler = type("BoundHandler", (Handler,), {"app": app})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            from streamcap.errors import BadInputError

            raise BadInputError(f"cannot serve on {host}:{port}: {err.strerror or err}") from None
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="web", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "WebServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.app.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
