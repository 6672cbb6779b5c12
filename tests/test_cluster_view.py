"""One view under --ray, without Ray: merged records reach the same record tap subscribers as a
single-process monitor (dashboard state, metrics, search index), the actors' snapshots land in
the driver's events folder (once each, kept in the node's spool until acknowledged), live frames
reach the dashboard's tiles only while watched, and the actor-side outboxes stay bounded.
Per-camera alert rules from cameras.yaml."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from streamcap.cluster.config import parse
from streamcap.cluster.driver import ClusterMonitor, _GroupState, driver_events, with_nodes
from streamcap.cluster.notify import group_rules
from streamcap.cluster.outbox import LiveFrames, SnapshotOutbox
from streamcap.errors import BadInputError
from streamcap.metrics import Metrics
from streamcap.tap import RecordTap
from streamcap.web.live import LiveHub
from streamcap.web.server import WebApp


def _line(event, source="door", **kw):
    return json.dumps({"schema": 2, "event": event, "time": "2026-01-01T00:00:00.000+00:00", "source": source, **kw})


def _reply(tmp_path, first_seq, lines, **extra):
    return {"node_id": "aaaaaaaa11", "node_ip": "127.0.0.2", "path": str(tmp_path / "door.aaaa.jsonl"),
            "first_seq": first_seq, "lines": lines, "done": False, "exit_code": None, "error": None,
            "restarted": False, "started": 1.0, **extra}


class FakeActor:
    def __init__(self):
        self.watched = []
        self.watch = SimpleNamespace(remote=lambda cams, fps: self.watched.append((cams, fps)))


def _cluster(tmp_path, events=None, hub=None):
    cfg = parse({"cameras": [{"name": "door", "url": "rtsp://h/s"}, {"name": "yard", "url": "rtsp://h/t"}]}, env={})
    tap = RecordTap()
    mon = ClusterMonitor(cfg, {}, sink=tap, local_dir=str(tmp_path), events=events, hub=hub)
    actor = FakeActor()
    st = _GroupState(group=cfg.groups["door"], actor=actor)
    mon.states["door"] = st
    return mon, st, tap, actor


def _jpeg(level=128):
    ok, buf = cv2.imencode(".jpg", np.full((24, 32, 3), level, np.uint8))
    return buf.tobytes()


def test_merged_records_reach_the_dashboard_and_metrics(tmp_path):
    hub = LiveHub(["door", "yard"])
    app = WebApp(hub=hub)
    metrics = Metrics()
    mon, st, tap, _ = _cluster(tmp_path, hub=hub)
    tap.subscribe(app.on_record)
    tap.subscribe(metrics.on_record)
    with_nodes(app, mon)
    mon._handle(st, _reply(tmp_path, 1, [
        _line("source_status", status="connected"),
        _line("frame", frame_index=0, latency_ms=12.0),
        _line("caption", shown="a man walks", changed=True, frame_index=0),
        _line("alert", rule="object:person", frame_index=0, label="person")]))
    state = app.state()
    door = next(c for c in state["cameras"] if c["name"] == "door")
    assert door["status"] == "connected" and door["caption"] == "a man walks" and door["last_alert"] == "object:person"
    assert door["node"] == "127.0.0.2-aaaaaa"
    assert state["nodes"][0]["node"] == "127.0.0.2-aaaaaa" and state["nodes"][0]["cameras"] == ["door"]
    text = metrics.text().decode() if isinstance(metrics.text(), bytes) else metrics.text()
    assert 'streamcap_alerts_total{camera="door",rule="object:person"} 1.0' in text


def test_snapshots_from_an_actor_land_in_the_events_folder(tmp_path):
    events_dir = tmp_path / "events"
    tap = RecordTap()
    store = driver_events(events_dir, 10.0, tap)
    mon, st, _, _ = _cluster(tmp_path, events=store)
    mon.sink = tap
    good = "door-abc123/20260101T000000000Z-f0000001-caption.jpg"
    mon._handle(st, _reply(tmp_path, 1, [_line("stats", fps=1)],
                           snapshots=[(good, _jpeg()), ("../outside.jpg", _jpeg())], snapshots_dropped=2))
    assert (events_dir / good).read_bytes()[:2] == b"\xff\xd8"
    assert not (tmp_path / "outside.jpg").exists()
    assert store.usage()["written"] == 1


def test_snapshot_drops_are_logged_and_stats_carry_the_folder_figures(tmp_path):
    seen = []
    tap = RecordTap()
    tap.subscribe(seen.append)
    store = driver_events(tmp_path / "events", 10.0, tap)
    mon, st, _, _ = _cluster(tmp_path, events=store)
    mon.sink = tap
    mon._handle(st, _reply(tmp_path, 1, [_line("stats", fps=1)], snapshots=[], snapshots_dropped=3))
    mon._handle(st, _reply(tmp_path, 2, [], snapshots=[], snapshots_dropped=3))
    assert [r["dropped"] for r in seen if r["event"] == "snapshots_dropped"] == [3]
    stats = next(r for r in seen if r["event"] == "stats")
    assert stats["events"]["dir"] == str(tmp_path / "events") and stats["seq"] == 1


def test_live_frames_reach_a_watched_tile_only(tmp_path):
    hub = LiveHub(["door", "yard"])
    mon, st, _, actor = _cluster(tmp_path, hub=hub)
    mon._handle(st, _reply(tmp_path, 1, [], frames={"door": _jpeg(10)}))
    door = hub.slot("door")
    assert door.seq == 0  # nobody watched: nothing kept
    mon._sync_watching()
    assert actor.watched == [([], 5.0)]
    with hub.watching(door):
        mon._sync_watching()
        assert actor.watched[-1] == (["door"], 5.0)
        frame = _jpeg(200)
        mon._handle(st, _reply(tmp_path, 1, [], frames={"door": frame}))
        assert hub.next_jpeg(door, 0, 1.0) == (1, frame)
        assert hub.encoded == 0  # sent as the actor encoded it
    mon._sync_watching()
    assert actor.watched[-1] == ([], 5.0)


def test_put_jpeg_ignores_unknown_cameras():
    hub = LiveHub(["door"])
    hub.put_jpeg("nope", b"x")


class _Result:
    def __init__(self, source, index):
        self.frame = SimpleNamespace(source=source, index=index)
        self.caption = None


def test_live_frames_outbox_keeps_only_the_newest_frame_of_watched_cameras():
    frames = LiveFrames()
    image = np.zeros((10, 10, 3), np.uint8)
    assert not frames.wants_image(_Result("door", 0))
    frames.watch(["door"], fps=0)
    assert frames.wants_image(_Result("door", 0)) and not frames.wants_image(_Result("yard", 0))
    frames(_Result("door", 0), image)
    frames(_Result("door", 1), np.full((10, 10, 3), 255, np.uint8))
    frames(_Result("yard", 1), image)
    out = frames.take()
    assert list(out) == ["door"] and cv2.imdecode(np.frombuffer(out["door"], np.uint8), 1).mean() > 200
    assert frames.take() == {}


def test_snapshot_outbox_names_like_the_events_store_and_is_bounded(tmp_path):
    box = SnapshotOutbox(str(tmp_path / "events"), 10.0, max_items=2)
    box.open()
    assert not (tmp_path / "events").exists()  # nothing created on the node
    names = []
    for i in range(3):
        rec = {"event": "caption", "source": "door", "changed": True, "frame_index": i, "time": "2026-01-01T00:00:00+00:00"}
        box.enrich(rec)
        names.append(rec["snapshot"])
        res = _Result("door", i)
        res.caption = SimpleNamespace(frame_index=i)
        box.on_frame(res, np.zeros((8, 8, 3), np.uint8))
    assert box.dropped == 1
    sent = box.take()
    assert [n for n, _ in sent] == names[1:] and all(d[:2] == b"\xff\xd8" for _, d in sent)
    assert box.take() == []


def _snap(box, i, camera="door"):
    rec = {"event": "caption", "source": camera, "changed": True, "frame_index": i, "time": "2026-01-01T00:00:00+00:00"}
    box.enrich(rec)
    res = _Result(camera, i)
    res.caption = SimpleNamespace(frame_index=i)
    box.on_frame(res, np.full((8, 8, 3), 40 * i, np.uint8))
    return rec["snapshot"]


def test_snapshots_wait_in_the_node_spool_until_the_driver_acknowledges_them(tmp_path):
    spool = tmp_path / "door.aaaa.snapshots"
    box = SnapshotOutbox(str(tmp_path / "events"), 10.0, spool=spool)
    a, b, c = (_snap(box, i) for i in range(3))
    assert len(list(spool.iterdir())) == 3
    assert [n for n, _ in box.take()] == [a, b, c]
    box.ack([a, b])  # the answer with c was lost on the way: c goes out again, first
    d = _snap(box, 3)
    assert [n for n, _ in box.take()] == [c, d] and box.resent == 1
    assert sorted(p.name for p in spool.iterdir()) == sorted(f"{quote(n, safe='')}.snap" for n in (c, d))
    # the actor crashes before the driver acknowledges c and d: its restart on this node sends them
    again = SnapshotOutbox(str(tmp_path / "events"), 10.0, spool=spool)
    e = _snap(again, 4)
    again.ack([c])  # the driver had c after all (acknowledged to the old incarnation's successor)
    sent = again.take()
    assert [n for n, _ in sent] == [d, e] and all(data[:2] == b"\xff\xd8" for _, data in sent)
    again.ack(None)  # without a list: everything sent is done (a driver that does not acknowledge)
    assert list(spool.iterdir()) == [] and again.take() == []


def test_the_driver_writes_a_resent_snapshot_once_and_acknowledges_each_answer(tmp_path):
    tap = RecordTap()
    store = driver_events(tmp_path / "events", 10.0, tap)
    mon, st, _, _ = _cluster(tmp_path, events=store)
    mon.sink = tap
    one, two = (f"door-abc123/20260101T000000000Z-f000000{i}-caption.jpg" for i in (1, 2))
    mon._handle(st, _reply(tmp_path, 1, [], snapshots=[(one, _jpeg())]))
    assert st.acked == [one]
    mon._handle(st, _reply(tmp_path, 1, [], snapshots=[(one, _jpeg(200)), (two, _jpeg())]))  # one sent again
    assert st.acked == [one, two] and store.usage()["written"] == 2 and st.snapshots == 2
    mon._handle(st, _reply(tmp_path, 1, []))
    assert st.acked == []


def test_camera_alerts_from_the_config_apply_to_their_camera_only():
    cfg = parse({"cameras": [
        {"name": "door", "url": "rtsp://h/a", "alerts": [{"object": "person", "cooldown": 5}]},
        {"name": "yard", "url": "rtsp://h/b", "group": "g"},
        {"name": "gate", "url": "rtsp://h/c", "group": "g", "alerts": [{"name": "cars", "object": "car"}]}]}, env={})
    rules = group_rules(cfg, {"alert_object": ["dog"]})
    assert [(r.name, r.cameras) for r in rules["door"]] == [("object:dog", ()), ("object:person", ("door",))]
    assert [(r.name, r.cameras) for r in rules["g"]] == [("object:dog", ()), ("cars", ("gate",))]
    assert rules["door"][1].cooldown_s == 5


@pytest.mark.parametrize("alerts, message", [
    ([{"object": "person", "caption": "x"}], "camera 'door', alert 1"),
    (["person"], "alert 1 is not a mapping"),
    ([{"object": "person", "cameras": ["x"]}], "'cameras' has no place"),
    ([{"object": "dog"}], "two alert rules are named 'object:dog'"),
])
def test_bad_camera_alerts_are_one_line_errors(alerts, message):
    cfg = parse({"cameras": [{"name": "door", "url": "rtsp://h/a", "alerts": alerts}]}, env={})
    with pytest.raises(BadInputError) as err:
        group_rules(cfg, {"alert_object": ["dog"]})
    assert message in str(err.value) and "\n" not in str(err.value)


def _config(tmp_path, alerts=""):
    from conftest import write_video

    clip = write_video(tmp_path / "clip.mp4", n=20)
    path = tmp_path / "c.yaml"
    path.write_text("defaults: {no-segment: true, no-caption: true}\ncameras:\n"
                    f"  - {{name: door, url: '{clip}'{alerts}}}\n")
    return path


def test_config_without_ray_takes_events_dir_and_camera_alerts(tmp_path):
    from conftest import run_cli

    config = _config(tmp_path, ", alerts: [{object: person}]")
    proc = run_cli("monitor", "--config", str(config), "--duration", "1", "--events-dir", str(tmp_path / "ev"),
                   "--webhook", "http://127.0.0.1:9/hook")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "ev" / "events.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "run" and records[-1]["event"] == "end" and "alerts" in records[-1]
    assert "0 alerts; webhook" in proc.stderr


def test_webhook_without_any_rule_is_refused(tmp_path):
    from conftest import run_cli

    proc = run_cli("monitor", "--config", str(_config(tmp_path)), "--webhook", "http://127.0.0.1:9/hook")
    assert proc.returncode == 2 and "--webhook sends alerts" in proc.stderr and "alerts: in the config" in proc.stderr
