"""Prometheus metrics from the run's records: values per camera, the text exposition parsed
back with prometheus-client's own parser, a registry apart from the global one, and /metrics
served on loopback."""

from __future__ import annotations

import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from streamcap.metrics import CONTENT_TYPE, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.text().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


RECORDS = [
    {"event": "source_status", "source": "cam1", "status": "connected"},
    {"event": "source_status", "source": "cam2", "status": "connected"},
    {"event": "frame", "source": "cam1", "frame_index": 0, "latency_ms": 41.5},
    {"event": "caption", "source": "cam1", "frame_index": 0, "shown": "a dog", "changed": True},
    {"event": "caption", "source": "cam1", "frame_index": 10, "shown": "a dog", "changed": False},
    {"event": "source_status", "source": "cam2", "status": "lost", "frames": 10},
    {"event": "source_status", "source": "cam2", "status": "reconnected", "outage_s": 2.0},
    {"event": "source_status", "source": "cam2", "status": "lost", "frames": 20},
    {"event": "stage_error", "source": "cam1", "frame_index": 3, "stage": "segment", "message": "boom"},
    {"event": "alert", "source": "cam1", "rule": "object:person"},
    {"event": "alert", "source": "cam1", "rule": "object:person"},
    {"event": "delivery_failed", "source": "cam1", "sink": "webhook", "error": "HTTP 500"},
    {"event": "delivery_dropped", "source": "cam1", "sink": "mqtt", "dropped": 4, "dropped_total": 4},
    {"event": "stats", "source": None, "input_fps": 24.9, "processed_fps": 12.5, "frames_in": 250,
     "processed": 125, "dropped": 120, "latency_ms": 80.2, "latency_max_ms": 150.0, "stage_errors": 1},
]


def test_values_from_records():
    m = Metrics()
    for r in RECORDS:
        m.on_record(r)
    s = samples(m)
    cam1, cam2, run = (("camera", "cam1"),), (("camera", "cam2"),), (("camera", "all"),)
    assert s[("streamcap_input_fps", run)] == 24.9
    assert s[("streamcap_processed_fps", run)] == 12.5
    assert s[("streamcap_dropped_frames_total", run)] == 120
    assert s[("streamcap_frames_read_total", run)] == 250
    assert s[("streamcap_latency_ms", run)] == 80.2
    assert s[("streamcap_camera_connected", cam1)] == 1 and s[("streamcap_camera_connected", cam2)] == 0
    assert s[("streamcap_reconnects_total", cam2)] == 1 and s[("streamcap_reconnects_total", cam1)] == 0
    assert s[("streamcap_source_events_total", (("camera", "cam2"), ("status", "lost")))] == 2
    assert s[("streamcap_frame_latency_ms", cam1)] == 41.5
    assert s[("streamcap_captions_total", cam1)] == 2 and s[("streamcap_caption_changes_total", cam1)] == 1
    assert s[("streamcap_stage_errors_total", (("camera", "cam1"), ("stage", "segment")))] == 1
    assert s[("streamcap_alerts_total", (("camera", "cam1"), ("rule", "object:person")))] == 2
    assert s[("streamcap_delivery_failures_total", (("camera", "cam1"), ("sink", "webhook")))] == 1
    assert s[("streamcap_delivery_dropped_total", (("sink", "mqtt"),))] == 4


def test_end_record_gives_the_final_counts():
    m = Metrics()
    m.on_record({"event": "stats", "source": None, "input_fps": 24.0, "frames_in": 10, "processed": 9, "dropped": 1})
    m.on_record({"event": "end", "source": None, "frames_read": 80, "processed": 78, "dropped": 2, "written": 78})
    s = samples(m)
    run = (("camera", "all"),)
    assert (s[("streamcap_frames_read_total", run)], s[("streamcap_frames_processed_total", run)],
            s[("streamcap_dropped_frames_total", run)], s[("streamcap_input_fps", run)]) == (80, 78, 2, 24.0)


def test_per_camera_stats_when_the_record_has_them():
    m = Metrics()
    m.on_record({"event": "stats", "source": None, "input_fps": 50.0, "processed_fps": 20.0,
                 "sources": {"cam1": {"input_fps": 25.0, "processed_fps": 10.0, "dropped": 3},
                             "cam2": {"input_fps": 25.0, "processed_fps": 10.0, "dropped": 5}}})
    s = samples(m)
    assert s[("streamcap_input_fps", (("camera", "cam1"),))] == 25.0
    assert s[("streamcap_dropped_frames_total", (("camera", "cam2"),))] == 5
    assert s[("streamcap_input_fps", (("camera", "all"),))] == 50.0


def test_run_wide_figures_combine_the_groups_of_a_ray_run():
    """Under monitor --ray each group's actor reports its own run: camera="all" is all of them,
    not whichever group reported last."""
    m = Metrics()
    m.on_record({"event": "stats", "source": None, "group": "a", "node": "n1", "input_fps": 10.0, "processed_fps": 10.0,
                 "frames_in": 100, "processed": 90, "dropped": 10, "latency_ms": 50.0, "latency_max_ms": 80.0,
                 "sources": {"cam1": {"input_fps": 10.0, "dropped": 10}}})
    m.on_record({"event": "stats", "source": None, "group": "b", "node": "n2", "input_fps": 30.0, "processed_fps": 30.0,
                 "frames_in": 300, "processed": 300, "dropped": 0, "latency_ms": 10.0, "latency_max_ms": 200.0,
                 "sources": {"cam2": {"input_fps": 15.0}, "cam3": {"input_fps": 15.0}}})
    m.on_record({"event": "stats", "source": None, "group": "a", "input_fps": 12.0, "processed_fps": 10.0,
                 "frames_in": 112, "processed": 100, "dropped": 12, "latency_ms": 50.0, "latency_max_ms": 90.0})
    s = samples(m)
    run = (("camera", "all"),)
    assert s[("streamcap_input_fps", run)] == 42.0  # the newest of each group, summed
    assert (s[("streamcap_frames_read_total", run)], s[("streamcap_frames_processed_total", run)],
            s[("streamcap_dropped_frames_total", run)]) == (412, 400, 12)
    assert s[("streamcap_latency_ms", run)] == 20.0  # (50 * 10 + 10 * 30) / 40
    assert s[("streamcap_latency_max_ms", run)] == 200.0
    assert s[("streamcap_input_fps", (("camera", "cam3"),))] == 15.0
    m.on_record({"event": "end", "source": None, "group": "b", "frames_read": 310, "processed": 310, "dropped": 0})
    assert samples(m)[("streamcap_frames_read_total", run)] == 422  # group a's last stats + group b's end


def test_own_registry_and_two_instances_apart():
    a, b = Metrics(), Metrics()
    a.on_record({"event": "alert", "source": "cam1", "rule": "r"})
    assert samples(b).get(("streamcap_alerts_total", (("camera", "cam1"), ("rule", "r")))) is None
    assert "streamcap_alerts_total" not in {m.name for m in REGISTRY.collect()}
    assert CONTENT_TYPE.startswith("text/plain")


def test_serve_on_loopback():
    m = Metrics()
    m.on_record({"event": "caption", "source": "cam1", "shown": "a dog", "changed": True})
    server, thread = m.serve(0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/plain")
        assert 'streamcap_captions_total{camera="cam1"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
