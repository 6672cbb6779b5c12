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


def command_line_rules(opts: dict[str, Any]) -> list:
    from streamcap.alerts import load_rules, rules_from_flags

    rules = load_rules(opts["alerts"]) if opts.get("alerts") is not None else []
    rules += rules_from_flags(opts.get("alert_object"), opts.get("alert_caption"),
                              cooldown_s=opts.get("alert_cooldown", 30.0),
                              min_duration_s=opts.get("alert_min_duration", 0.0))
    return rules


def group_rules(cfg: CameraConfig, opts: dict[str, Any]) -> dict[str, list]:
    """The rules each camera group runs (command line + its cameras' own), checked: two rules
    that apply to one camera never share a name."""
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
        names = [r.name for r in common]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise BadInputError(f"two alert rules are named {dup!r} (a rules file and a flag?)")
        out[gname] = rules
    return out


def build_notifier(opts: dict[str, Any], rules: list, cameras: list[str], *, any_rules: bool):
    """The Notifier for a record tap: ``rules`` (run here), webhook, MQTT and metrics from the
    options; None when there is nothing to do. ``any_rules``: rules run somewhere (here or in
    the actors), which a webhook needs."""
    from streamcap.cli.notify import _mqtt_options

    webhook = opts.get("webhook")
    if webhook is not None:
        from streamcap.alerts.delivery import safe_url

        if not webhook.lower().startswith(("http://", "https://")):
            raise BadInputError(f"--webhook must be an http:// or https:// URL, got {safe_url(webhook)}")
        if not any_rules:
            raise BadInputError("--webhook sends alerts: give rules with --alerts, --alert-object, "
                                "--alert-caption or a camera's alerts: in the config")
    mqtt = _mqtt_options(opts) if opts.get("mqtt") else None
    if (opts.get("mqtt_user") or opts.get("mqtt_password_file")) and mqtt is None:
        raise BadInputError("--mqtt-user and --mqtt-password-file need --mqtt HOST[:PORT]")
    metrics = None
    if opts.get("metrics_port") is not None:
        from streamcap.metrics import Metrics

        metrics = Metrics()
    if not (rules or webhook or mqtt or metrics):
        return None
    from streamcap.alerts.service import Notifier

    return Notifier(rules, webhook=webhook, mqtt=mqtt, metrics=metrics, metrics_port=opts.get("metrics_port"),
                    cameras=cameras)


def attach(notifier, tap, metrics_port: int | None) -> None:
    try:
        notifier.attach(tap)
    except OSError as err:  # the metrics port is taken
        notifier.close()
        raise BadInputError(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {err.strerror or err}") from None
    tap.notifier = notifier
