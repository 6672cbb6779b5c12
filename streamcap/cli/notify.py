"""The alert, MQTT, webhook and metrics options of the video commands, turned into a
``Notifier`` attached to the run's record tap (``streamcap.alerts.service``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamcap.errors import BadInputError


def notify_tap(opts: dict[str, Any], sources: list[Any], tap: Any = None) -> Any:
    """A record tap with the notifier the options ask for attached (``tap.notifier``); ``tap``
    as given (None included) when they ask for none. ``sources``: the run's SourceConfigs (their
    cameras are announced to MQTT at once). Bad values raise BadInputError."""
    rules = command_line_rules(opts)
    notifier = build_notifier(opts, rules, [s.resolved().name for s in sources], any_rules=bool(rules))
    if notifier is None:
        return tap
    from streamcap.tap import RecordTap

    tap = tap if tap is not None else RecordTap()
    attach(notifier, tap, opts.get("metrics_port"))
    return tap


def command_line_rules(opts: dict[str, Any]) -> list:
    """The rules of ``--alerts``, ``--alert-object`` and ``--alert-caption``; two of one name are
    an error."""
    from streamcap.alerts import load_rules, rules_from_flags

    rules = load_rules(opts["alerts"]) if opts.get("alerts") is not None else []
    rules += rules_from_flags(opts.get("alert_object"), opts.get("alert_caption"),
                              cooldown_s=opts.get("alert_cooldown", 30.0),
                              min_duration_s=opts.get("alert_min_duration", 0.0))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise BadInputError(f"two alert rules are named {dup!r} (a rules file and a flag?)")
    return rules


def build_notifier(opts: dict[str, Any], rules: list, cameras: list[str], *, any_rules: bool,
                   rule_sources: str = "--alerts, --alert-object or --alert-caption") -> Any:
    """The Notifier for ``rules`` (run where it is attached) and the webhook, MQTT and metrics
    the options ask for; None when there is nothing to do. ``any_rules``: rules run somewhere
    (here, or in a cluster's actors), which a webhook needs; ``rule_sources`` names where they
    come from in that error."""
    webhook = opts.get("webhook")
    if webhook is not None:
        from streamcap.alerts.delivery import safe_url

        if not webhook.lower().startswith(("http://", "https://")):
            raise BadInputError(f"--webhook must be an http:// or https:// URL, got {safe_url(webhook)}")
    webhook_options = _webhook_snapshot_options(opts) if webhook is not None else {}
    if webhook is None and opts.get("webhook_snapshot", "auto") != "auto":
        raise BadInputError("--webhook-snapshot goes with --webhook")
    mqtt = _mqtt_options(opts) if opts.get("mqtt") else None
    if (opts.get("mqtt_user") or opts.get("mqtt_password_file")) and mqtt is None:
        raise BadInputError("--mqtt-user and --mqtt-password-file need --mqtt HOST[:PORT]")
    metrics = None
    if opts.get("metrics_port") is not None:
        from streamcap.metrics import Metrics

        metrics = Metrics()
    if not (rules or webhook or mqtt or metrics):
        return None
    if webhook and not any_rules:
        raise BadInputError(f"--webhook sends alerts: give rules with {rule_sources}")
    from streamcap.alerts.service import Notifier

    return Notifier(rules, webhook=webhook, webhook_options=webhook_options, mqtt=mqtt, metrics=metrics,
                    metrics_port=opts.get("metrics_port"), cameras=cameras)


def attach(notifier: Any, tap: Any, metrics_port: int | None) -> None:
    """Subscribe ``notifier`` to ``tap`` (``tap.notifier``); a taken metrics port is an error."""
    try:
        notifier.attach(tap)
    except OSError as err:  # the metrics port is taken
        notifier.close()
        raise BadInputError(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {err.strerror or err}") from None
    tap.notifier = notifier


def _webhook_snapshot_options(opts: dict[str, Any]) -> dict[str, Any]:
    """``--webhook-snapshot`` and ``--public-url`` as WebhookDelivery options. Without
    --public-url, a dashboard (--serve) gives its own address once it listens
    (``Notifier.set_public_url``)."""
    from urllib.parse import urlsplit

    from streamcap.alerts.delivery import SNAPSHOT_MODES

    mode = opts.get("webhook_snapshot") or "auto"
    if mode not in SNAPSHOT_MODES:
        raise BadInputError(f"--webhook-snapshot must be one of {', '.join(SNAPSHOT_MODES)}, got {mode!r}")
    public = opts.get("public_url")
    if public is not None:
        parts = urlsplit(public)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise BadInputError(f"--public-url must be an http:// or https:// address such as http://host:8080/, "
                                f"got {public!r}")
    if mode in ("url", "both") and public is None and not opts.get("serve"):
        raise BadInputError(f"--webhook-snapshot {mode} needs an address for the snapshots: --public-url or --serve")
    base = public.rstrip("/") + "/events" if public is not None else None
    return {"snapshot_mode": mode, "snapshot_base_url": base}


def _mqtt_options(opts: dict[str, Any]) -> dict[str, Any]:
    from streamcap.alerts.mqtt import parse_host

    try:
        host, port = parse_host(opts["mqtt"])
    except ValueError as err:
        raise BadInputError(str(err)) from None
    password = None
    if opts.get("mqtt_password_file") is not None:
        password = _read_secret(Path(opts["mqtt_password_file"]))
    prefix = (opts.get("mqtt_topic") or "streamcap").strip("/")
    if not prefix or any(c in prefix for c in "+#"):
        raise BadInputError(f"--mqtt-topic must be a topic without + or #, got {opts.get('mqtt_topic')!r}")
    return dict(host=host, port=port, username=opts.get("mqtt_user"), password=password, prefix=prefix)


def _read_secret(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"--mqtt-password-file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read --mqtt-password-file {path}: "
                            f"{getattr(err, 'strerror', None) or type(err).__name__}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise BadInputError(f"--mqtt-password-file {path} is empty")
    return lines[0]


def report_notify(tap: Any, console: Any) -> None:
    """The end-of-run line of the notifier, when there was one."""
    notifier = getattr(tap, "notifier", None)
    line = notifier.summary() if notifier is not None else None
    if line:
        console.print(line, highlight=False, markup=False)
