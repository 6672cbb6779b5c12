"""Alert rules and deliveries of ``monitor --config/--ray``.

Rules: the command line's (``--alerts``, ``--alert-object``, ``--alert-caption``) apply to every
camera; a camera's ``alerts:`` in cameras.yaml apply to that camera only. Under ``--ray`` the
rules of a camera group run inside its actor (the alert engine reads the group's ``frame`` and
``caption`` records there, with boxes, and normalized zones get the frame size from the frames;
the alert record takes its snapshot from the frame that shows it); deliveries (webhook, MQTT)
and metrics run once, on the driver, from the merged records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from streamcap.cluster.config import CameraConfig
from streamcap.errors import BadInputError


def camera_rules(cfg: CameraConfig) -> dict[str, list]:
    """Each camera's own rules (cameras.yaml ``alerts:``), limited to that camera."""
    from streamcap.alerts.rules import parse_rule

    where = Path(str(cfg.path or "cameras.yaml"))
    out: dict[str, list] = {}
    for cam in cfg.cameras:
        rules = []
        for i, item in enumerate(cam.alerts):
            if not isinstance(item, dict):
                raise BadInputError(f"camera {cam.name!r}: alert {i + 1} is not a mapping (object: ..., or caption: ...)")
            item = {**item, "__line__": f" camera {cam.name!r}, alert {i + 1}", "__lines__": {}}
            if "cameras" in item:
                raise BadInputError(f"camera {cam.name!r}: alert {i + 1}: 'cameras' has no place under a camera")
            rules.append(dataclasses.replace(parse_rule(item, i, where, 0), cameras=(cam.name,)))
        out[cam.name] = rules
    return out


def group_rules(cfg: CameraConfig, opts: dict[str, Any]) -> dict[str, list]:
    """The rules each camera group runs (command line + its cameras' own), checked: two rules
    that apply to one camera never share a name."""
    from streamcap.cli.notify import command_line_rules

    common = command_line_rules(opts)
    per_cam = camera_rules(cfg)
    out = {}
    for gname, group in cfg.groups.items():
        rules = list(common)
        for cam in group.cameras:
            names = {r.name for r in common if r.applies_to(cam.name)}
            for r in per_cam[cam.name]:
                if r.name in names:
                    raise BadInputError(f"camera {cam.name!r}: two alert rules are named {r.name!r}")
                names.add(r.name)
            rules += per_cam[cam.name]
        out[gname] = rules
    return out


def build_notifier(opts: dict[str, Any], rules: list, cameras: list[str], *, any_rules: bool):
    """``streamcap.cli.notify.build_notifier`` with a camera's ``alerts:`` named as a source of rules."""
    from streamcap.cli.notify import build_notifier as build

    return build(opts, rules, cameras, any_rules=any_rules,
                 rule_sources="--alerts, --alert-object, --alert-caption or a camera's alerts: in the config")
