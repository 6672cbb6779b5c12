"""The notifier on a real record tap: alerts written through the tap reach the JSONL log and
every subscriber, stats and end records carry the counters, the run record's argv loses the
webhook's secrets, and normalized zones learn each camera's frame size from one drawn frame."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from conftest import read_jsonl
from streamcap.alerts.rules import Rule, Zone
from streamcap.alerts.service import Notifier
from streamcap.sinks import JsonlSink
from streamcap.tap import RecordTap


def person(box):
    return {"label": "person", "score": 0.9, "box": box, "track_id": 1}


def test_alerts_through_the_tap(tmp_path):
    log = tmp_path / "run.jsonl"
    tap = RecordTap(JsonlSink(log).open())
    seen = []
    tap.subscribe(seen.append)
    notifier = Notifier([Rule(name="p", object="person", cooldown_s=0)]).attach(tap)
    tap.write("run", command="monitor", argv=["monitor", "--webhook", "https://u:pw@h/hook/SECRET"])
    tap.write("frame", source="cam1", frame_index=4, pts_s=0.4, detections={"count": 1, "objects": [person([0, 0, 9, 9])]})
    tap.write("stats", elapsed_s=1.0)
    tap.close()
    records = read_jsonl(log)
    assert [r["event"] for r in records] == ["run", "frame", "alert", "stats"]
    assert [r["event"] for r in seen] == ["run", "frame", "alert", "stats"]
    alert = records[2]
    assert (alert["source"], alert["rule"], alert["frame_index"]) == ("cam1", "p", 4)
    assert records[3]["alerts"] == 1
    assert records[0]["argv"] == ["monitor", "--webhook", "https://h/..."]
    assert notifier.summary() == "streamcap: 1 alerts"


def test_normalized_zone_learns_the_frame_size_from_one_frame():
    tap = RecordTap()
    out = []
    tap.subscribe(lambda r: out.append(r) if r["event"] == "alert" else None)
    right_half = Zone(points=((0.5, 0), (1, 0), (1, 1), (0.5, 1)), normalized=True)
    notifier = Notifier([Rule(name="right", object="person", zone=right_half, cooldown_s=0)],
                        cameras=["cam1"]).attach(tap)
    assert tap.has_frame_subscribers
    tap.write("frame", source="cam1", frame_index=0, pts_s=0.0, detections={"objects": [person([300, 0, 380, 90])]})
    assert out == []  # the size is not known before the first frame is drawn
    tap.on_frame(SimpleNamespace(frame=SimpleNamespace(source="cam1", index=0)), np.zeros((100, 400, 3), np.uint8))
    assert notifier.engine.frame_sizes == {"cam1": (400, 100)}
    assert not tap.has_frame_subscribers  # drawing is not asked for any more
    tap.write("frame", source="cam1", frame_index=1, pts_s=0.1, detections={"objects": [person([300, 0, 380, 90])]})
    assert [a["frame_index"] for a in out] == [1]
    # a new resolution: one more frame is looked at
    tap.write("source_status", source="cam1", status="resolution_changed", old_size=[400, 100], new_size=[800, 200])
    assert tap.has_frame_subscribers
