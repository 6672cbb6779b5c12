"""Alerts, deliveries and metrics attached to a run's record tap (``streamcap.tap.RecordTap``).

``Notifier(...).attach(tap)`` before ``run_job``: the alert engine, the webhook, MQTT and the
metrics become subscribers of the tap; alerts are written with ``tap.write("alert", ...)`` (so
they are logged, snapshotted by the event store and seen by every subscriber), and delivery
failures with ``tap.write("delivery_failed" | "delivery_dropped", ...)``. ``stats`` and ``end``
records get ``alerts`` (how many fired) and ``deliveries`` (per sink: sent, failed, dropped,
queued); the ``run`` record's argv shows ``--webhook`` without its secrets. When the tap closes
(the end of ``run_job``) the deliveries get up to ``flush_s`` seconds to send what is queued
before the log is closed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from streamcap.alerts.delivery import Delivery, WebhookDelivery, redact_secret_args
from streamcap.alerts.engine import AlertEngine
from streamcap.alerts.rules import Rule

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, rules: list[Rule] = (), *, webhook: str | None = None, webhook_options: dict | None = None,
                 mqtt: dict | None = None, metrics: Any = None, metrics_port: int | None = None,
                 cameras: list[str] = (), grace_s: float = 1.0, flush_s: float = 2.0) -> None:
        self.rules = list(rules)
        self.webhook_url = webhook
        self.webhook_options = dict(webhook_options or {})
        self.mqtt_options = dict(mqtt) if mqtt else None
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.cameras = list(cameras)
        self.grace_s = grace_s
        self.flush_s = flush_s
        self.engine: AlertEngine | None = None
        self.deliveries: list[Delivery] = []
        self.metrics_server = None
        self.tap = None
        self._closed = False
        self._watch_sizes = False
        self._size_fn = self._frame_size  # one bound method: the tap unsubscribes by identity

    def attach(self, tap: Any) -> "Notifier":
        self.tap = tap
        tap.add_enricher(self._enrich)
        if self.rules:
            self.engine = AlertEngine(self.rules, tap.write, grace_s=self.grace_s)
            tap.subscribe(self.engine.on_record)
            if any(r.zone is not None and r.zone.normalized for r in self.rules):
                # Normalized zones need each camera's frame size: taken from the first frame drawn,
                # then the frame subscription is dropped again (drawing costs).
                self._watch_sizes = True
                tap.subscribe_frames(self._size_fn)
        if self.webhook_url:
            self.deliveries.append(WebhookDelivery(self.webhook_url, snapshot_path=self._snapshot_path,
                                                   report=tap.write, **self.webhook_options))
        if self.mqtt_options is not None:
            from streamcap.alerts.mqtt import MqttDelivery

            self.deliveries.append(MqttDelivery(cameras=self.cameras, report=tap.write, **self.mqtt_options))
        for d in self.deliveries:
            d.start()
            tap.subscribe(d.on_record)
        if self.metrics is not None:
            tap.subscribe(self.metrics.on_record)
            if self.metrics_port is not None:
                self.metrics_server = self.metrics.serve(self.metrics_port)
        closer = tap.close

        def close_then_tap() -> None:  # deliveries flush while the log is still open
            self.close()
            closer()
        tap.close = close_then_tap
        return self

    # -- tap hooks ---------------------------------------------------------------------------------
    def _enrich(self, record: dict) -> None:
        event = record.get("event")
        if event == "run" and isinstance(record.get("argv"), list):
            record["argv"] = redact_secret_args(record["argv"])
        elif event in ("stats", "end"):
            if self.engine is not None:
                record["alerts"] = self.engine.alerts
            if self.deliveries:
                record["deliveries"] = {d.name: d.stats() for d in self.deliveries}
        elif event == "source_status" and record.get("status") == "resolution_changed" and self._watch_sizes:
            self.tap.subscribe_frames(self._size_fn)  # look at the new size once

    def _frame_size(self, result: Any, image: Any) -> None:
        h, w = image.shape[:2]
        self.engine.set_frame_size(result.frame.source, w, h)
        known = set(self.engine.frame_sizes)
        if not self.cameras or known.issuperset(self.cameras):
            self.tap.unsubscribe_frames(self._size_fn)

    def set_public_url(self, base_url: str) -> None:
        """The dashboard's address (``http://host:port/``): webhooks link snapshots under its
        ``events/`` route (unless the options gave an address already)."""
        for d in self.deliveries:
            if isinstance(d, WebhookDelivery) and not d.snapshot_base_url:
                d.set_snapshot_base_url(base_url.rstrip("/") + "/events")

    def _snapshot_path(self, name: str) -> Path | None:
        events = getattr(self.tap, "events", None)
        if events is None:
            return None
        try:
            return events.path(name)
        except ValueError:
            return None

    # -- the end -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for d in self.deliveries:
            d.close(timeout_s=self.flush_s)
        if self.metrics_server is not None:
            server, _thread = self.metrics_server
            server.shutdown()
            server.server_close()

    def summary(self) -> str | None:
        """One line for the end of a run: alerts fired, and each delivery's figures."""
        parts = []
        if self.engine is not None:
            parts.append(f"{self.engine.alerts} alerts")
        for d in self.deliveries:
            s = d.stats()
            where = getattr(d, "display", None) or (f"{d.host}:{d.port}" if hasattr(d, "host") else d.name)
            parts.append(f"{d.name} {where}: {s['sent']} sent, {s['failed']} failed, {s['dropped']} dropped")
        if self.metrics_port is not None:
            parts.append(f"metrics were at http://127.0.0.1:{self.metrics_port}/metrics")
        return "streamcap: " + "; ".join(parts) if parts else None
