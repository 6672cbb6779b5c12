"""Prometheus metrics from the run's records (prometheus-client, a registry of its own).

``Metrics.on_record`` is a subscriber of the records the pipeline logs; ``Metrics.text()`` is the
Prometheus text exposition (what the dashboard serves at ``/metrics``; ``serve(port)`` serves it
alone on 127.0.0.1 when there is no dashboard). Values come from:

- ``stats`` records: input and processed fps, frames read and processed, dropped frames,
  latency: for the whole run as ``camera="all"``, and per camera from a ``sources`` breakdown
  ({name: {field: value}}) when the record has one; the ``end`` record's final counts. Under
  ``monitor --ray`` each camera group's actor reports its own run (the driver adds ``group``):
  ``camera="all"`` is then the sum over the groups (fps, frames, drops), their latency
  averaged by processed fps, and the largest of their latency maxima;
- ``source_status``: connected (1/0), reconnects, lost connections, failed connects;
- ``frame``: the latency of the last frame record per camera;
- ``caption``, ``alert``, ``stage_error``, ``delivery_failed``/``delivery_dropped``: counts.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST
RUN = "all"  # the camera label of values the run reports for all cameras together

# stats field -> (metric, kind, help)
_STATS = {
    "input_fps": ("streamcap_input_fps", "gauge", "Frames read per second (since the previous stats record)."),
    "processed_fps": ("streamcap_processed_fps", "gauge", "Frames through the models per second."),
    "frames_in": ("streamcap_frames_read", "counter", "Frames read from the source."),
    "processed": ("streamcap_frames_processed", "counter", "Frames through the models."),
    "dropped": ("streamcap_dropped_frames", "counter", "Frames dropped to keep latency bounded."),
    "latency_ms": ("streamcap_latency_ms", "gauge", "Frame age when written, milliseconds (moving average)."),
    "latency_max_ms": ("streamcap_latency_max_ms", "gauge", "Largest frame age when written, milliseconds."),
}


def _take(into: dict[str, float], values: dict) -> None:
    for key in _STATS:
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            into[key] = v


def _combine(groups: list[dict[str, float]]) -> dict[str, float]:
    """Several engines' run figures as one run's: sums, the latency averaged by processed fps
    (evenly where no group reports fps), the largest maximum."""
    out: dict[str, float] = {}
    for key in ("input_fps", "processed_fps", "frames_in", "processed", "dropped"):
        have = [g[key] for g in groups if key in g]
        if have:
            out[key] = sum(have)
    lat = [(g["latency_ms"], g.get("processed_fps", 0.0)) for g in groups if "latency_ms" in g]
    if lat:
        weight = sum(w for _, w in lat)
        out["latency_ms"] = sum(v * w for v, w in lat) / weight if weight > 0 else sum(v for v, _ in lat) / len(lat)
    top = [g["latency_max_ms"] for g in groups if "latency_max_ms" in g]
    if top:
        out["latency_max_ms"] = max(top)
    return out


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, float]] = defaultdict(dict)  # camera -> stats field -> value
        self._groups: dict[str, dict[str, float]] = defaultdict(dict)  # group -> its run's stats (monitor --ray)
        self._connected: dict[str, int] = {}
        self._status_counts: dict[tuple[str, str], int] = defaultdict(int)  # (camera, status)
        self._frame_latency: dict[str, float] = {}
        self._frames_logged: dict[str, int] = defaultdict(int)
        self._captions: dict[str, int] = defaultdict(int)
        self._caption_changes: dict[str, int] = defaultdict(int)
        self._alerts: dict[tuple[str, str], int] = defaultdict(int)  # (camera, rule)
        self._stage_errors: dict[tuple[str, str], int] = defaultdict(int)  # (camera, stage)
        self._delivery_failed: dict[tuple[str, str], int] = defaultdict(int)  # (sink, camera)
        self._delivery_dropped: dict[str, int] = defaultdict(int)  # sink
        self.registry.register(_Collector(self))

    def on_record(self, record: dict) -> None:
        event = record.get("event")
        camera = record.get("source") or RUN
        with self._lock:
            if event == "stats":
                self._take_run(record, record)
                per = record.get("sources")
                if isinstance(per, dict):
                    for name, values in per.items():
                        if isinstance(values, dict):
                            self._take_stats(name, values)
            elif event == "end":  # the run's final counts (fps and latency stay as last reported)
                final = {"frames_in": record.get("frames_read"), "processed": record.get("processed"),
                         "dropped": record.get("dropped")}
                self._take_run(record, final)
            elif event == "source_status":
                status = str(record.get("status"))
                self._status_counts[(camera, status)] += 1
                if status in ("connected", "reconnected"):
                    self._connected[camera] = 1
                elif status in ("lost", "stalled", "gave_up", "failed", "ended", "connect_failed"):
                    self._connected[camera] = 0
            elif event == "frame":
                self._frames_logged[camera] += 1
                if isinstance(record.get("latency_ms"), (int, float)):
                    self._frame_latency[camera] = record["latency_ms"]
            elif event == "caption":
                self._captions[camera] += 1
                if record.get("changed"):
                    self._caption_changes[camera] += 1
            elif event == "alert":
                self._alerts[(camera, str(record.get("rule")))] += 1
            elif event == "stage_error":
                self._stage_errors[(camera, str(record.get("stage")))] += 1
            elif event == "delivery_failed":
                self._delivery_failed[(str(record.get("sink")), camera)] += 1
            elif event == "delivery_dropped":
                n = record.get("dropped")
                self._delivery_dropped[str(record.get("sink"))] += int(n) if isinstance(n, int) else 1

    def _take_stats(self, camera: str, values: dict) -> None:
        _take(self._stats[camera], values)

    def _take_run(self, record: dict, values: dict) -> None:
        """The run's own figures; a group's (``monitor --ray``) are combined with the others'."""
        group = record.get("group")
        if not isinstance(group, str):
            self._take_stats(RUN, values)
            return
        _take(self._groups[group], values)
        self._stats[RUN] = _combine(list(self._groups.values()))

    def text(self) -> bytes:
        """The Prometheus text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Serve ``/metrics`` on ``host:port`` from a thread; returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=host, registry=self.registry)

    def families(self) -> Iterator[Any]:
        with self._lock:
            for key, (name, kind, doc) in _STATS.items():
                fam = (GaugeMetricFamily if kind == "gauge" else CounterMetricFamily)(name, doc, labels=["camera"])
                for camera, values in sorted(self._stats.items()):
                    if key in values:
                        fam.add_metric([camera], float(values[key]))
                yield fam
            yield _family(CounterMetricFamily, "streamcap_stage_errors", "Model or worker failures (stage_error records).",
                          ["camera", "stage"], self._stage_errors)
            yield _family(GaugeMetricFamily, "streamcap_camera_connected", "1 while the camera delivers frames.",
                          ["camera"], {(c,): v for c, v in self._connected.items()})
            reconnects = {(c,): n for (c, s), n in self._status_counts.items() if s == "reconnected"}
            for camera in self._connected:
                reconnects.setdefault((camera,), 0)
            yield _family(CounterMetricFamily, "streamcap_reconnects", "Reconnections after a lost connection.",
                          ["camera"], reconnects)
            yield _family(CounterMetricFamily, "streamcap_source_events", "source_status records by status.",
                          ["camera", "status"], self._status_counts)
            yield _family(GaugeMetricFamily, "streamcap_frame_latency_ms", "Latency of the last logged frame, ms.",
                          ["camera"], {(c,): v for c, v in self._frame_latency.items()})
            yield _family(CounterMetricFamily, "streamcap_frames_logged", "Frame records logged.",
                          ["camera"], {(c,): v for c, v in self._frames_logged.items()})
            yield _family(CounterMetricFamily, "streamcap_captions", "Captions made.",
                          ["camera"], {(c,): v for c, v in self._captions.items()})
            yield _family(CounterMetricFamily, "streamcap_caption_changes", "Changes of the shown caption.",
                          ["camera"], {(c,): v for c, v in self._caption_changes.items()})
            yield _family(CounterMetricFamily, "streamcap_alerts", "Alerts fired.", ["camera", "rule"], self._alerts)
            yield _family(CounterMetricFamily, "streamcap_delivery_failures",
                          "Alert/MQTT deliveries that failed after their retries.", ["sink", "camera"],
                          self._delivery_failed)
            yield _family(CounterMetricFamily, "streamcap_delivery_dropped",
                          "Deliveries dropped from a full queue (a dead webhook or broker).", ["sink"],
                          {(s,): n for s, n in self._delivery_dropped.items()})


def _family(cls, name: str, doc: str, labels: list[str], values: dict) -> Any:
    fam = cls(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        fam.add_metric([str(k) for k in (key if isinstance(key, tuple) else (key,))], float(value))
    return fam


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self.metrics.families()

    def describe(self) -> list:
        return []
