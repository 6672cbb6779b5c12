"""The alert engine: reads the records the pipeline logs and emits an ``alert`` record when a
rule fires.

It is a subscriber like any other reader of the log: ``on_record(record)`` takes the JSONL dicts
(``frame`` records for object rules, ``caption`` records for caption rules) and ``emit(event,
source=..., **fields)`` writes the alert back through the run's record path (the log, and every
subscriber of it: MQTT, the webhook, metrics, the dashboard). The clock is each record's stream
time (``pts_s``), so a file gives the same alerts on every run.

Per rule and camera an *episode* starts when the rule first matches and ends when it stops
matching (an object missing for more than ``grace_s``, or a shown caption without the words).
An episode fires once, when it has lasted ``min_duration`` seconds and the rule's last alert on
that camera is at least ``cooldown`` seconds old.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from streamcap.alerts.rules import Rule

log = logging.getLogger(__name__)

Emit = Callable[..., Any]


@dataclass
class _State:
    since: float | None = None  # stream time the episode started
    last_seen: float | None = None
    fired: bool = False  # this episode has fired
    last_fire: float | None = None
    last_t: float | None = None


class AlertEngine:
    """``snapshot(fields) -> name | None`` (optional) saves a picture for an alert and names it."""

    def __init__(self, rules: list[Rule], emit: Emit, *, snapshot: Callable[[dict], str | None] | None = None,
                 grace_s: float = 1.0) -> None:
        self.rules = list(rules)
        self.emit = emit
        self.snapshot = snapshot
        self.grace_s = grace_s
        self.frame_sizes: dict[str, tuple[int, int]] = {}
        self.alerts = 0
        self._state: dict[tuple[str, str], _State] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def set_frame_size(self, camera: str, width: int, height: int) -> None:
        """The frame size of a camera, for normalized zones when records do not carry one."""
        self.frame_sizes[camera] = (int(width), int(height))

    def on_record(self, record: dict) -> None:
        event = record.get("event")
        if event not in ("frame", "caption"):
            return
        camera = record.get("source")
        t = record.get("pts_s")
        if camera is None or not isinstance(t, (int, float)):
            return
        fire: list[dict] = []
        with self._lock:
            for rule in self.rules:
                if not rule.applies_to(camera):
                    continue
                if event == "frame" and rule.kind == "object":
                    matched = self._objects(rule, camera, record)
                    if matched is None:
                        continue
                    what = {"kind": "object", "label": rule.object, "count": len(matched), "objects": matched}
                    grace = self.grace_s
                elif event == "caption" and rule.kind == "caption":
                    shown = record.get("shown")
                    matched = rule.caption_matches(shown)
                    what = {"kind": "caption", "caption": shown, "words": list(rule.caption)}
                    grace = 0.0
                else:
                    continue
                fields = self._step(rule, camera, float(t), bool(matched), grace)
                if fields is not None:
                    fields.update(frame_index=record.get("frame_index"), pts_s=record.get("pts_s"),
                                  frame_time=record.get("frame_time"), matched=what)
                    fire.append(fields)
        for fields in fire:  # outside the lock: emitting may call back into subscribers
            self._fire(camera, fields)

    def _step(self, rule: Rule, camera: str, t: float, matched: bool, grace: float) -> dict | None:
        st = self._state.setdefault((rule.name, camera), _State())
        if st.last_t is not None and t < st.last_t:  # the stream restarted its clock: start afresh
            st.since = st.last_seen = st.last_fire = None
            st.fired = False
        st.last_t = t
        if not matched:
            if st.since is not None and (st.last_seen is None or t - st.last_seen > grace):
                st.since = st.last_seen = None
                st.fired = False
            return None
        if st.since is None:
            st.since = t
        st.last_seen = t
        if st.fired or t - st.since < rule.min_duration_s:
            return None
        if st.last_fire is not None and t - st.last_fire < rule.cooldown_s:
            return None
        st.fired = True
        st.last_fire = t
        return {"rule": rule.name, "camera": camera, "duration_s": round(t - st.since, 3)}

    def _objects(self, rule: Rule, camera: str, record: dict) -> list[dict] | None:
        """The objects of a frame record that match the rule; None when the frame cannot tell
        (no segmenter, or a normalized zone on a camera whose frame size is not known)."""
        det = record.get("detections")
        if not isinstance(det, dict):
            return None
        objects = det.get("objects")
        if objects is None:  # objects left out of the log: the counts still tell presence
            if rule.zone is not None or rule.min_score:
                return None
            n = int((det.get("counts") or {}).get(rule.object, 0))
            return [{"label": rule.object}] * n
        size = self._size(camera, record, det)
        if rule.zone is not None and rule.zone.normalized and size is None:
            if rule.name not in self._warned:
                self._warned.add(rule.name)
                log.debug("alert rule %s: the frame size of %s is not known yet; its normalized zone "
                          "is checked from the first frame drawn", rule.name, camera)
            return None
        out = []
        for obj in objects:
            if obj.get("label") != rule.object or float(obj.get("score", 1.0)) < rule.min_score:
                continue
            box = obj.get("box")
            if rule.zone is not None:
                if not box or len(box) != 4:
                    continue
                x, y = (box[0] + box[2]) / 2.0, float(box[3])  # bottom centre: where it stands
                if not rule.zone.contains(x, y, size):
                    continue
            out.append({k: obj[k] for k in ("label", "score", "box", "track_id") if k in obj})
        return out

    def _size(self, camera: str, record: dict, det: dict) -> tuple[int, int] | None:
        size = record.get("size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[0]), int(size[1])
        masks = det.get("masks_rle")
        if masks:
            h, w = masks[0]["size"]
            return int(w), int(h)
        return self.frame_sizes.get(camera)

    def _fire(self, camera: str, fields: dict) -> None:
        if self.snapshot is not None:
            try:
                fields["snapshot"] = self.snapshot(dict(fields))
            except Exception as err:  # a snapshot that cannot be saved never loses the alert
                log.warning("alert %s: no snapshot: %s", fields["rule"], err)
                fields["snapshot"] = None
        self.alerts += 1
        log.info("alert %s on %s at frame %s", fields["rule"], camera, fields.get("frame_index"))
        self.emit("alert", source=camera, **fields)
