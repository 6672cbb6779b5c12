"""The driver's merge logic on hand-made actor replies (no Ray): sequence numbers, a restarted
actor, a camera moved with and without the old node's log readable, catching up after a gap."""

from __future__ import annotations

import json
import time

from streamcap.cluster import driver as drv
from streamcap.cluster.actor import read_lines
from streamcap.cluster.config import parse
from streamcap.cluster.driver import ClusterMonitor, _GroupState


class ListSink:
    def __init__(self):
        self.records = []

    def write(self, event, *, source=None, ts=None, **fields):
        self.records.append({"event": event, "source": source, **fields})


def _line(event, source="door", **kw):
    return json.dumps({"schema": 2, "event": event, "time": "2026-01-01T00:00:00.000+00:00", "source": source, **kw})


def _monitor(tmp_path):
    cfg = parse({"cameras": [{"name": "door", "url": "rtsp://h/s"}]}, env={})
    sink = ListSink()
    mon = ClusterMonitor(cfg, {}, sink=sink, local_dir=str(tmp_path))
    st = _GroupState(group=cfg.groups["door"], actor=None)
    mon.states["door"] = st
    return mon, st, sink


def _reply(path, first_seq, lines, node_id="aaaaaaaa11", ip="127.0.0.2", started=1.0, done=False):
    return {"node_id": node_id, "node_ip": ip, "path": str(path), "first_seq": first_seq, "lines": lines,
            "done": done, "exit_code": None, "error": None, "restarted": False, "started": started}


def test_read_lines_complete_lines_only_and_cursor(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"a":1}\n{"a":2}\n{"a":3}\n{"a":')
    lines, cursor = read_lines(path, 0, 10)
    assert lines == ['{"a":1}', '{"a":2}', '{"a":3}'] and cursor[0] == 3
    more, cursor2 = read_lines(path, 1, 1, cursor=None)
    assert more == ['{"a":2}']
    with open(path, "a") as f:
        f.write('4}\n')
    rest, _ = read_lines(path, 3, 10, cursor=cursor)
    assert rest == ['{"a":4}']
    assert read_lines(tmp_path / "missing.jsonl", 0, 10)[0] == []


def test_records_gain_node_group_seq_and_nothing_twice(tmp_path):
    mon, st, sink = _monitor(tmp_path)
    p = tmp_path / "door.aaaaaaaa11.jsonl"
    mon._handle(st, _reply(p, 1, [_line("run", None), _line("frame", frame_index=0)]))
    mon._handle(st, _reply(p, 3, [_line("frame", frame_index=1)]))
    assert [(r["event"], r["seq"], r["node"], r["group"]) for r in sink.records] == [
        ("run", 1, "127.0.0.2-aaaaaa", "door"), ("frame", 2, "127.0.0.2-aaaaaa", "door"),
        ("frame", 3, "127.0.0.2-aaaaaa", "door")]
    assert st.consumed == {str(p): 3}


def test_restart_on_same_node_continues_the_numbering(tmp_path):
    mon, st, sink = _monitor(tmp_path)
    p = tmp_path / "door.aaaaaaaa11.jsonl"
    mon._handle(st, _reply(p, 1, [_line("frame")]))
    mon._handle(st, _reply(p, 2, [_line("run", None)], started=2.0))
    events = [r["event"] for r in sink.records]
    assert events == ["frame", "actor_restarted", "run"]
    restarted = sink.records[1]
    assert restarted["resumed_after_seq"] == 1 and restarted["cameras"] == ["door"]


def test_moved_camera_takes_what_the_old_node_wrote_when_readable(tmp_path):
    mon, st, sink = _monitor(tmp_path)
    old = tmp_path / "door.aaaaaaaa11.jsonl"
    old.write_text("\n".join([_line("run", None), _line("frame", frame_index=0), _line("frame", frame_index=1)]) + "\n")
    mon._handle(st, _reply(old, 1, [_line("run", None)]))
    new = tmp_path / "door.bbbbbbbb22.jsonl"
    mon._handle(st, _reply(new, 1, [_line("run", None)], node_id="bbbbbbbb22", ip="127.0.0.3", started=2.0))
    got = [(r["event"], r.get("seq"), r.get("node"), r.get("recovered")) for r in sink.records]
    assert got == [("run", 1, "127.0.0.2-aaaaaa", None),
                   ("frame", 2, "127.0.0.2-aaaaaa", True), ("frame", 3, "127.0.0.2-aaaaaa", True),
                   ("camera_moved", None, "127.0.0.3-bbbbbb", None),
                   ("run", 1, "127.0.0.3-bbbbbb", None)]
    moved = sink.records[3]
    assert (moved["from"], moved["to"], moved["source"]) == ("127.0.0.2-aaaaaa", "127.0.0.3-bbbbbb", "door")
    assert moved["outage_s"] >= 0


def test_moved_camera_says_what_it_missed_when_the_old_log_is_gone(tmp_path):
    mon, st, sink = _monitor(tmp_path)
    old = tmp_path / "elsewhere" / "door.aaaaaaaa11.jsonl"  # on the lost node's disk only
    mon._handle(st, _reply(old, 1, [_line("run", None), _line("frame")]))
    new = tmp_path / "door.bbbbbbbb22.jsonl"
    mon._handle(st, _reply(new, 1, [], node_id="bbbbbbbb22", ip="127.0.0.3", started=2.0))
    missed = next(r for r in sink.records if r["event"] == "records_missed")
    assert (missed["node"], missed["after_seq"], missed["group"]) == ("127.0.0.2-aaaaaa", 2, "door")
    assert any(r["event"] == "camera_moved" for r in sink.records)


def test_caught_up_after_a_gap_names_the_sequence_numbers(tmp_path, monkeypatch):
    mon, st, sink = _monitor(tmp_path)
    p = tmp_path / "door.aaaaaaaa11.jsonl"
    mon._handle(st, _reply(p, 1, [_line("frame")]))
    st.last_ok = time.monotonic() - (drv.UNREACHABLE_S + 5)
    mon._handle(st, _reply(p, 2, [_line("frame"), _line("frame")]))
    caught = next(r for r in sink.records if r["event"] == "caught_up")
    assert (caught["from_seq"], caught["to_seq"]) == (2, 3) and caught["unreachable_s"] > drv.UNREACHABLE_S
    assert [r["seq"] for r in sink.records if r["event"] == "frame"] == [1, 2, 3]


def test_exit_codes(tmp_path):
    mon, st, _ = _monitor(tmp_path)
    mon.reason = "sigint"
    assert mon.exit_code() == 130
    mon.reason = "duration"
    st.exit_code = 3
    assert mon.exit_code() == 3


def test_urls_on_the_command_line_are_one_group_each():
    from streamcap.cluster.config import groups_for_urls

    cfg = groups_for_urls(["rtsp://u:pw@h1/s", "rtsp://h2/s"])
    assert list(cfg.groups) == ["cam1", "cam2"]
    assert cfg.cameras[0].url == "rtsp://u:pw@h1/s" and "pw" not in cfg.cameras[0].name


def test_forwarded_lines_extend_as_text_equal_to_a_rebuild_and_go_out_in_one_write(tmp_path, monkeypatch):
    """The driver's fast path: an actor's own log line gains node/group/seq as text, exactly the
    line ``make_record`` would build again; an answer's run of such lines is one write. A line
    holding a URL (redaction) or not JSON takes the rebuild, in the file's order."""
    from streamcap.sinks import JsonlSink, make_record, record_line
    from streamcap.tap import RecordTap

    cfg = parse({"cameras": [{"name": "door", "url": "rtsp://h/s"}]}, env={})
    log = tmp_path / "merged.jsonl"
    sink = JsonlSink(log).open()
    tap = RecordTap(sink)
    seen = []
    tap.subscribe(seen.append)
    mon = ClusterMonitor(cfg, {}, sink=tap, local_dir=str(tmp_path))
    st = _GroupState(group=cfg.groups["door"], actor=None)
    mon.states["door"] = st

    def actor_line(event, **kw):  # what the actor's JsonlSink wrote
        return record_line(make_record(event, source="door", ts=1.5e9, **kw)).rstrip("\n")

    lines = [actor_line("frame", frame_index=0, objects=[{"label": "dog", "score": 0.9, "box": [1, 2, 3, 4]}]),
             actor_line("stage_error", message="rtsp://admin:pw@cam/s timed out"),
             actor_line("caption", text="a dog runs", frame_index=1),
             actor_line("frame", frame_index=2, objects=[]),
             "not json"]
    writes = []
    append = sink._append
    monkeypatch.setattr(sink, "_append", lambda data, n: (writes.append(n), append(data, n))[1])
    mon._handle(st, _reply(tmp_path / "door.aaaaaaaa11.jsonl", 1, lines))
    sink.close()

    assert writes == [1, 1, 2, 1]  # frame | URL line rebuilt | caption+frame at once | unparsed
    got = log.read_text().splitlines()
    node = "127.0.0.2-aaaaaa"
    for seq in (1, 3, 4):
        rec = json.loads(lines[seq - 1])
        event, source = rec.pop("event"), rec.pop("source")
        rebuilt = record_line(make_record(event, source=source, **rec, node=node, group="door", seq=seq))
        assert got[seq - 1] == rebuilt.rstrip("\n")
    url = json.loads(got[1])
    assert "pw" not in got[1] and url["message"].startswith("rtsp://") and url["seq"] == 2
    assert json.loads(got[4])["event"] == "unparsed" and json.loads(got[4])["seq"] == 5
    assert [r["event"] for r in seen] == ["frame", "stage_error", "caption", "frame", "unparsed"]
    assert [r["seq"] for r in seen] == [1, 2, 3, 4, 5] and all(r["node"] == node for r in seen)
    assert tap.records == 5 and st.consumed == {str(tmp_path / "door.aaaaaaaa11.jsonl"): 5}
