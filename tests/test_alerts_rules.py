"""Alert rules and the engine on hand-written record sequences: zones, minimum duration,
cooldown, cameras, caption words; and the one-line errors of a bad rules file."""

from __future__ import annotations

import pytest

from streamcap.alerts import AlertEngine, load_rules, rules_from_flags
from streamcap.alerts.rules import Rule, Zone, point_in_polygon
from streamcap.errors import BadInputError


def frame(t, objects, source="cam1", index=None, size=None):
    rec = {"event": "frame", "source": source, "frame_index": int(t * 10) if index is None else index,
           "pts_s": t, "frame_time": f"t{t}", "detections": {"count": len(objects), "objects": objects}}
    if size:
        rec["size"] = size
    return rec


def person(box=(10, 10, 50, 100), score=0.9, tid=1, label="person"):
    return {"label": label, "score": score, "box": list(box), "track_id": tid}


def caption(t, shown, source="cam1"):
    return {"event": "caption", "source": source, "frame_index": int(t * 10), "pts_s": t, "shown": shown,
            "raw": shown, "changed": True}


def run(rules, records, **kw):
    out = []
    engine = AlertEngine(rules, lambda event, source=None, **f: out.append({"event": event, "source": source, **f}),
                         **kw)
    for r in records:
        engine.on_record(r)
    return out


def test_object_rule_fires_once_per_presence():
    rule = Rule(name="p", object="person", cooldown_s=0)
    seq = [frame(0.0, []), frame(0.1, [person()]), frame(0.2, [person()]), frame(0.3, [person()]),
           frame(2.0, []), frame(3.5, [person()])]
    alerts = run([rule], seq)
    assert [a["frame_index"] for a in alerts] == [1, 35]
    first = alerts[0]
    assert first["event"] == "alert" and first["source"] == "cam1" and first["rule"] == "p"
    assert first["matched"]["kind"] == "object" and first["matched"]["objects"][0]["track_id"] == 1
    assert first["pts_s"] == 0.1 and first["frame_time"] == "t0.1"


def test_min_duration_counts_stream_time_and_a_gap_restarts_it():
    rule = Rule(name="p", object="person", min_duration_s=2.0, cooldown_s=0)
    seq = [frame(t / 2, [person()]) for t in range(0, 4)]          # 0 .. 1.5 s: too short
    seq += [frame(3.0, [])]                                         # gone longer than the grace
    seq += [frame(3.0 + t / 2, [person()]) for t in range(1, 6)]    # 3.5 .. 5.5 s
    alerts = run([rule], seq, grace_s=1.0)
    assert len(alerts) == 1
    assert alerts[0]["pts_s"] == 5.5 and alerts[0]["duration_s"] == 2.0


def test_a_short_miss_within_the_grace_keeps_the_episode():
    rule = Rule(name="p", object="person", min_duration_s=1.0, cooldown_s=0)
    seq = [frame(0.0, [person()]), frame(0.5, []), frame(1.0, [person()])]
    assert [a["pts_s"] for a in run([rule], seq, grace_s=1.0)] == [1.0]
    assert run([rule], seq, grace_s=0.2) == []


def test_cooldown_holds_back_a_new_episode():
    rule = Rule(name="p", object="person", cooldown_s=10.0)
    seq = [frame(0.0, [person()]), frame(2.0, []), frame(4.0, [person()]), frame(6.0, [person()]),
           frame(10.5, [person()]), frame(11.0, [person()])]
    # the second episode starts at 4 s inside the cooldown and fires when the cooldown is over
    assert [a["pts_s"] for a in run([rule], seq, grace_s=0.5)] == [0.0, 10.5]


def test_zone_in_pixels_uses_where_the_object_stands():
    zone = Zone(points=((100, 100), (200, 100), (200, 200), (100, 200)), normalized=False)
    rule = Rule(name="door", object="person", zone=zone, cooldown_s=0)
    outside = person(box=(120, 20, 180, 90))   # bottom centre (150, 90): above the zone
    inside = person(box=(120, 60, 180, 150))   # bottom centre (150, 150)
    dog_inside = person(box=(120, 60, 180, 150), label="dog")
    alerts = run([rule], [frame(0, [outside, dog_inside]), frame(1, [outside, inside])])
    assert [a["pts_s"] for a in alerts] == [1]
    assert alerts[0]["matched"]["count"] == 1 and alerts[0]["matched"]["objects"][0]["box"] == [120, 60, 180, 150]


def test_normalized_zone_needs_the_frame_size():
    zone = Zone(points=((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)), normalized=True)  # right half
    rule = Rule(name="right", object="person", zone=zone, cooldown_s=0)
    left, right = person(box=(10, 10, 50, 90)), person(box=(300, 10, 380, 90))
    assert run([rule], [frame(0, [right])]) == []  # no size known: cannot tell, never guesses
    assert len(run([rule], [frame(0, [left]), frame(1, [right], size=[400, 100])])) == 1
    # from the masks' size ([h, w], COCO RLE)
    rec = frame(0, [right])
    rec["detections"]["masks_rle"] = [{"size": [100, 400], "counts": ""}]
    assert len(run([rule], [rec])) == 1
    out = []
    engine = AlertEngine([rule], lambda e, source=None, **f: out.append(f))
    engine.set_frame_size("cam1", 400, 100)
    engine.on_record(frame(0, [left]))
    engine.on_record(frame(1, [right]))
    assert [a["pts_s"] for a in out] == [1]


def test_min_score_and_camera_filter():
    rules = [Rule(name="sure", object="person", min_score=0.8, cooldown_s=0, cameras=("front*",))]
    seq = [frame(0, [person(score=0.95)], source="back"), frame(1, [person(score=0.5)], source="front-door"),
           frame(2, [person(score=0.9)], source="front-door")]
    alerts = run(rules, seq)
    assert [(a["source"], a["pts_s"]) for a in alerts] == [("front-door", 2)]


def test_state_is_per_camera():
    rule = Rule(name="p", object="person", cooldown_s=100)
    seq = [frame(0, [person()], source="a"), frame(0, [person()], source="b"), frame(1, [person()], source="a")]
    assert [a["source"] for a in run([rule], seq)] == ["a", "b"]


def test_caption_rule_matches_whole_words_in_the_shown_caption():
    rule = rules_from_flags(captions=["Dog"], cooldown_s=0)[0]
    seq = [caption(0, "a hotdog stand"), caption(2, "a dog on the sofa"), caption(4, "a dog lies down"),
           caption(6, "an empty room"), caption(8, "the dog is back")]
    alerts = run([rule], seq)
    assert [a["pts_s"] for a in alerts] == [2, 8]
    assert alerts[0]["matched"] == {"kind": "caption", "caption": "a dog on the sofa", "words": ["dog"]}
    assert rule.name == "caption:dog"
    two = Rule(name="two", caption=("dog", "sofa"), cooldown_s=0)
    assert [a["pts_s"] for a in run([two], seq)] == [2]


def test_frames_without_detections_do_not_end_an_episode():
    rule = Rule(name="p", object="person", cooldown_s=0, min_duration_s=1.0)
    no_det = {"event": "frame", "source": "cam1", "frame_index": 5, "pts_s": 0.5, "detections": None}
    assert [a["pts_s"] for a in run([rule], [frame(0, [person()]), no_det, frame(1.0, [person()])])] == [1.0]


def test_a_clock_that_goes_back_starts_afresh():
    rule = Rule(name="p", object="person", cooldown_s=100)
    seq = [frame(5, [person()]), frame(6, []), frame(0, [person()])]  # the stream restarted
    assert len(run([rule], seq, grace_s=0)) == 2


def test_snapshot_name_goes_into_the_alert():
    rule = Rule(name="p", object="person", cooldown_s=0)
    seen = []

    def snap(fields):
        seen.append(fields)
        return "cam1/000001_alert.jpg"
    alerts = run([rule], [frame(0.1, [person()])], snapshot=snap)
    assert alerts[0]["snapshot"] == "cam1/000001_alert.jpg"
    assert seen[0]["rule"] == "p" and seen[0]["camera"] == "cam1"


def test_point_in_polygon_concave():
    u = ((0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3))  # a U shape
    assert point_in_polygon(0.5, 2, u) and point_in_polygon(2.5, 2, u)
    assert not point_in_polygon(1.5, 2, u) and not point_in_polygon(4, 1, u)


# -- the rules file ------------------------------------------------------------------------------

GOOD = """\
rules:
  - name: person at the door
    object: person
    zone: [[0.1, 0.5], [0.6, 0.5], [0.6, 1.0], [0.1, 1.0]]
    min_duration: 2
    cooldown: 60
    cameras: [front*]
  - name: dog
    caption: dog sofa
  - object: car
    zone: [[0, 0], [640, 0], [640, 200]]
    min_score: 0.7
"""


def test_load_rules(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(GOOD)
    door, dog, car = load_rules(p)
    assert door.name == "person at the door" and door.zone.normalized and door.min_duration_s == 2
    assert door.cooldown_s == 60 and door.cameras == ("front*",)
    assert dog.kind == "caption" and dog.caption == ("dog", "sofa") and dog.cooldown_s == 30
    assert car.name == "object:car" and not car.zone.normalized and car.min_score == 0.7


@pytest.mark.parametrize("text, message", [
    ("rules:\n  - name: a\n    object: person\n    zonee: [[0,0],[1,0],[1,1]]\n",
     "rules.yaml:4: rule 'a': unknown field 'zonee'"),
    ("rules:\n  - name: a\n    object: person\n  - name: b\n    object: car\n    cooldown: -1\n",
     "rules.yaml:6: rule 'b': 'cooldown' must be a number of 0 or more, got -1"),
    ("rules:\n  - name: a\n    object: person\n    caption: dog\n",
     "rules.yaml:2: rule 'a': needs exactly one of 'object'"),
    ("rules:\n  - object: person\n    zone: [[0, 0], [1, 0]]\n",
     "rules.yaml:3: rule 1: 'zone' needs at least 3 points, got 2"),
    ("rules:\n  - object: person\n    zone: [[0, 0], [2, 0], [2, 2]]\n    zone_units: normalized\n",
     "rules.yaml:3: rule 1: a normalized 'zone' has coordinates between 0 and 1"),
    ("rules:\n  - name: a\n    object: person\n  - name: a\n    caption: dog\n",
     "rules.yaml:4: two rules are named 'a' (the first at "),
    ("rules:\n  - name: a\n    object: [person\n", "rules.yaml:4: not valid YAML"),
    ("- object: person\n", "expected a mapping with a 'rules:' list"),
    ("rules:\n  - caption: dog\n    zone: [[0,0],[1,0],[1,1]]\n", "rules.yaml:3: rule 1: a zone applies to object rules only"),
    ("rules: []\n", "rules.yaml:1: 'rules' is empty"),
])
def test_rules_file_errors_are_one_line_with_the_line(tmp_path, text, message):
    p = tmp_path / "rules.yaml"
    p.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_rules(p)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(str(tmp_path))
    assert message in line, line


def test_rules_file_missing(tmp_path):
    with pytest.raises(BadInputError, match="alert rules file not found"):
        load_rules(tmp_path / "nope.yaml")


def test_flags():
    rules = rules_from_flags(["person", "dog"], ["red car"], cooldown_s=5)
    assert [r.name for r in rules] == ["object:person", "object:dog", "caption:red car"]
    assert all(r.cooldown_s == 5 for r in rules)
    with pytest.raises(BadInputError):
        rules_from_flags(captions=["!!"])
    with pytest.raises(BadInputError, match="two rules"):
        rules_from_flags(["person", "person"])
