"""Getting records out of the process without ever holding up the pipeline.

``Delivery`` is a subscriber of the run's records: ``on_record`` picks what it sends and puts it
on a bounded queue, never waiting (a full queue drops its oldest item and counts it). One thread
per delivery sends, retrying a failed item a few times with backoff before it counts it as
failed. Failures and drops are written back through ``report`` as ``delivery_failed`` and
``delivery_dropped`` records (drops at most one record every ``report_every_s`` seconds, with
the total), so a dead webhook or broker shows in the log, the metrics and the dashboard.

``WebhookDelivery`` POSTs each ``alert`` record as JSON. Its URL may hold secrets (user and
password, a token in the path or query): it appears in messages only as ``safe_url(url)``.
"""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from streamcap.sinks import record_line

log = logging.getLogger(__name__)

Report = Callable[..., Any]
SECRET_OPTIONS = ("--webhook",)  # options whose value is shown as safe_url() in the run record


def safe_url(url: str) -> str:
    """``https://user:tok@host:8123/api/webhook/SECRET?x=1`` -> ``https://host:8123/...``."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    rest = "/..." if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def redact_secret_args(argv: list[str]) -> list[str]:
    """A command line with the values of ``SECRET_OPTIONS`` replaced by their safe form."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append(safe_url(arg))
            hide = False
            continue
        name, eq, value = arg.partition("=")
        if name in SECRET_OPTIONS:
            if eq:
                out.append(f"{name}={safe_url(value)}")
            else:
                out.append(arg)
                hide = True
            continue
        out.append(arg)
    return out


class Delivery:
    """Base class: subclasses define ``name``, ``accept(record) -> item | None`` and ``send(item)``
    (raises on failure); ``describe(item)`` names an item in reports."""

    name = "delivery"

    def __init__(self, *, max_queue: int = 100, attempts: int = 3, backoff_s: float = 0.5,
                 report: Report | None = None, report_every_s: float = 10.0) -> None:
        if max_queue < 1 or attempts < 1:
            raise ValueError("max_queue and attempts must be 1 or more")
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.report = report
        self.report_every_s = report_every_s
        self.sent = self.failed = self.dropped = 0
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._drops_reported = 0
        self._last_drop_report = float("-inf")

    # -- the pipeline side: never waits ----------------------------------------------------------
    def on_record(self, record: dict) -> None:
        if self._stop.is_set():
            return
        try:
            items = self.accept(record)
        except Exception as err:  # a bad record never breaks the caller
            log.warning("%s: cannot handle a %s record: %s", self.name, record.get("event"), err)
            return
        for item in items:
            self.submit(item)

    def submit(self, item: Any) -> None:
        dropped = None
        with self._cond:
            if len(self._queue) >= self.max_queue:
                dropped = self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._cond.notify()
        if dropped is not None:
            self._report_drops(dropped)

    def stats(self) -> dict[str, int]:
        with self._cond:
            queued = len(self._queue) + (1 if self._busy else 0)
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "queued": queued}

    # -- subclass hooks --------------------------------------------------------------------------
    def accept(self, record: dict) -> list[Any]:
        raise NotImplementedError

    def send(self, item: Any) -> None:
        raise NotImplementedError

    def describe(self, item: Any) -> dict[str, Any]:
        return {}

    # -- the delivery thread ---------------------------------------------------------------------
    def start(self) -> "Delivery":
        self._thread = threading.Thread(target=self._run, name=f"delivery-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(item)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, item: Any) -> None:
        error = None
        for attempt in range(self.attempts):
            if attempt and self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
            try:
                self.send(item)
                self.sent += 1
                return
            except Exception as err:
                error = self.error_text(err)
        self.failed += 1
        log.warning("%s: delivery failed after %d attempts: %s", self.name, self.attempts, error)
        self._emit("delivery_failed", item, attempts=self.attempts, error=error)

    def error_text(self, err: BaseException) -> str:
        """What went wrong, in words that hold no secret (no URL, no password)."""
        if isinstance(err, urllib.error.HTTPError):
            return f"HTTP {err.code} {err.reason}"
        if isinstance(err, urllib.error.URLError):
            return f"cannot connect: {getattr(err.reason, 'strerror', None) or type(err.reason).__name__}"
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        return type(err).__name__ + (f": {err}" if isinstance(err, (ConnectionError, TimeoutError)) else "")

    def _report_drops(self, item: Any) -> None:
        now = time.monotonic()
        if now - self._last_drop_report < self.report_every_s:
            return
        self._last_drop_report = now
        new = self.dropped - self._drops_reported
        self._drops_reported = self.dropped
        log.warning("%s: queue full (%d), %d deliveries dropped so far", self.name, self.max_queue, self.dropped)
        self._emit("delivery_dropped", item, dropped=new, dropped_total=self.dropped)

    def _emit(self, event: str, item: Any, **fields: Any) -> None:
        if self.report is None:
            return
        try:
            info = self.describe(item)
            self.report(event, source=info.pop("camera", None), sink=self.name, **info, **fields)
        except Exception as err:  # reporting must not kill the delivery thread
            log.warning("%s: cannot report %s: %s", self.name, event, err)

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what is queued for up to ``timeout_s``, then stop; what is left is counted dropped."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._queue or self._busy) and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            left_over = list(self._queue)
            self._queue.clear()
            self.dropped += len(left_over)
            self._stop.set()
            self._cond.notify_all()
        if left_over:
            self._last_drop_report = float("-inf")
            self._report_drops(left_over[-1])
        self.stop_transport()

    def stop_transport(self) -> None:
        pass


SNAPSHOT_MODES = ("auto", "url", "bytes", "both", "none")


class WebhookDelivery(Delivery):
    """POST every ``alert`` record as JSON to ``url``, with its snapshot as ``snapshot_mode`` says:
    ``url``: its address (``snapshot_url``, under ``snapshot_base_url``: the events route of a
    dashboard); ``bytes``: the JPEG base64-encoded (``snapshot_jpeg``, found by
    ``snapshot_path(name)``); ``both`` (the default here; the address only when a base URL is
    given); ``none``; ``auto`` (the CLI's default): the address when a base URL is known, else
    the bytes."""

    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 5.0, snapshot_path: Callable[[str], Path | None] | None = None,
                 snapshot_base_url: str | None = None, snapshot_wait_s: float = 3.0, snapshot_mode: str = "both",
                 **kw: Any) -> None:
        super().__init__(**kw)
        if snapshot_mode not in SNAPSHOT_MODES:
            raise ValueError(f"snapshot_mode must be one of {', '.join(SNAPSHOT_MODES)}, got {snapshot_mode!r}")
        self.snapshot_mode = snapshot_mode
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a webhook must be an http:// or https:// URL, got {safe_url(url)}")
        self.headers = {"Content-Type": "application/json", "User-Agent": "streamcap"}
        if parts.username is not None:  # user:password@ becomes an Authorization header
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
            netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            if parts.port:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self._url = urllib.parse.urlunsplit(parts)
        self.display = safe_url(url)
        self.timeout_s = timeout_s
        self.snapshot_path = snapshot_path
        self.snapshot_wait_s = snapshot_wait_s
        self.snapshot_base_url = snapshot_base_url.rstrip("/") if snapshot_base_url else None

    def accept(self, record: dict) -> list[Any]:
        return [record] if record.get("event") == "alert" else []

    def describe(self, item: dict) -> dict[str, Any]:
        return {"camera": item.get("source"), "rule": item.get("rule"), "frame_index": item.get("frame_index")}

    def set_snapshot_base_url(self, base_url: str | None) -> None:
        """Where snapshots are served (``http://host:port/events``), once known (a dashboard
        started after this delivery)."""
        self.snapshot_base_url = base_url.rstrip("/") if base_url else None

    def _sends(self) -> tuple[bool, bool]:
        """(address, bytes) of the snapshot in each POST."""
        mode = self.snapshot_mode
        if mode == "auto":
            mode = "url" if self.snapshot_base_url else "bytes"
        return (mode in ("url", "both") and bool(self.snapshot_base_url), mode in ("bytes", "both"))

    def payload(self, record: dict) -> bytes:
        body = dict(record)
        name = record.get("snapshot")
        send_url, send_bytes = self._sends()
        if name and (send_url or send_bytes):
            path = self.snapshot_path(name) if self.snapshot_path is not None else None
            # The event store writes an alert's snapshot from the next frame drawn: wait a moment
            # for it, so that its address answers and its bytes are there (this is the delivery
            # thread; the pipeline never waits here).
            deadline = time.monotonic() + self.snapshot_wait_s
            while path is not None and not Path(path).exists() and time.monotonic() < deadline:
                if self._stop.wait(0.05):
                    break
            if send_url:
                body["snapshot_url"] = f"{self.snapshot_base_url}/{urllib.parse.quote(str(name))}"
            if send_bytes and path is not None and Path(path).exists():
                try:
                    body["snapshot_jpeg"] = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                except OSError as err:
                    log.warning("webhook: snapshot %s not readable: %s", name, err.strerror or err)
        return record_line(body).encode("utf-8")  # numpy numbers as numbers, like the log

    def send(self, item: dict) -> None:
        request = urllib.request.Request(self._url, data=self.payload(item), headers=self.headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (http/https only)
            response.read(1024)
