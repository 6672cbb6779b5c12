"""``monitor --config cameras.yaml`` and ``monitor --ray ADDRESS``: the CLI side."""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import typer

from streamcap.cli.common import err_console
from streamcap.cluster.config import CameraConfig, groups_for_urls, load
from streamcap.errors import BadInputError


def cameras(opts: dict[str, Any]) -> CameraConfig:
    if opts.get("config") is not None and opts.get("urls"):
        raise BadInputError("give camera URLs or --config, not both")
    if opts.get("config") is not None:
        return load(opts["config"])
    if not opts.get("urls"):
        raise BadInputError("give one or more camera URLs, or --config cameras.yaml")
    if len(set(opts["urls"])) != len(opts["urls"]):
        raise BadInputError("the same URL is given twice")
    return groups_for_urls(list(opts["urls"]))


def local_log_dir(log: Path | None) -> str:
    """Where each actor keeps its own log on its node: beside the merged log (the same path on
    every node; on shared storage the driver can read what a lost node wrote)."""
    if log is not None:
        return str(Path(log).resolve().parent / f"{Path(log).name}.nodes")
    return str(Path(tempfile.gettempdir()) / f"streamcap-nodes-{uuid.uuid4().hex[:8]}")


def _sources(cfg: CameraConfig, opts: dict[str, Any]) -> list:
    from streamcap.cluster.jobs import _source

    return [_source(c, opts) for c in cfg.cameras]


def monitor_cameras(opts: dict[str, Any]) -> None:
    from streamcap.alerts.delivery import redact_secret_args
    from streamcap.cluster.jobs import group_job, single_job
    from streamcap.cli.notify import attach
    from streamcap.cluster.notify import build_notifier, group_rules
    from streamcap.tap import RecordTap
    from streamcap.web.auth import redact_argv

    cfg = cameras(opts)
    argv = redact_secret_args(redact_argv(sys.argv[1:]))
    rules = group_rules(cfg, opts)
    any_rules = any(rules.values())
    names = [c.name for c in cfg.cameras]
    if opts.get("ray") is None:
        from streamcap.cli.run import _run

        every = list({id(r): r for rs in rules.values() for r in rs}.values())
        tap = RecordTap()
        notifier = build_notifier(opts, every, names, any_rules=any_rules)
        if notifier is not None:
            attach(notifier, tap, opts.get("metrics_port"))
        _with_dashboard(opts, cfg, tap, lambda dashboard: _run(single_job(cfg, opts, log=opts["log"], argv=argv),
                                                               tap=tap))
        return
    address = opts["ray"]
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BadInputError("--ray needs Ray: pip install 'streamcap[ray]'") from None
    if not (address in ("local", "auto") or ":" in address):
        raise BadInputError(f"--ray must be local, auto or HOST:PORT, got {address!r}")
    from streamcap.runner import Job, effective_log
    from streamcap.sinks import check_output_path

    jobs = {name: group_job(g, opts, log=None, argv=argv) for name, g in cfg.groups.items()}
    events_dir = opts.get("events_dir")
    log = effective_log(Job(command="monitor", sources=[], log=opts.get("log"), events_dir=events_dir))
    if events_dir is not None:
        from streamcap.events import check_events_dir

        if not (opts.get("events_max_mb") or 500.0) > 0:
            raise BadInputError(f"--events-max-mb must be more than 0, got {opts.get('events_max_mb')}")
        check_events_dir(events_dir)
    if log is not None:
        check_output_path(log, [], append=True)
    views = {}
    for name, job in jobs.items():
        job.duration_s = None  # the driver ends the run; each actor runs until told
        job.index = False  # the driver keeps the one search index, beside the merged log
        job.stats = False  # no table inside an actor
        job.events_dir = None  # snapshots go to the driver's folder (see cluster.outbox), never the node's
        views[name] = {"rules": rules[name], "live": opts.get("serve") is not None,
                       "events_dir": str(Path(events_dir).resolve()) if events_dir is not None else None,
                       "events_max_mb": opts.get("events_max_mb") or 500.0}
    tap = RecordTap()
    notifier = build_notifier(opts, [], names, any_rules=any_rules)  # the rules run in the actors
    if notifier is not None:
        attach(notifier, tap, opts.get("metrics_port"))
    from streamcap.cluster.driver import run_cluster

    def go(dashboard) -> int:
        return run_cluster(cfg, jobs, address=address, log_path=log, local_dir=local_log_dir(log),
                           duration_s=opts.get("duration"), console=err_console,
                           index=not opts.get("no_index", False), tap=tap, views=views, events_dir=events_dir,
                           events_max_mb=opts.get("events_max_mb") or 500.0, dashboard=dashboard,
                           view_fps=opts.get("serve_fps") or 5.0)
    code = _with_dashboard(opts, cfg, tap, go)
    from streamcap.cli.notify import report_notify
    from streamcap.cli.run import _report_history

    _report_history(tap)
    report_notify(tap, err_console)
    if code:
        raise typer.Exit(code)


def _with_dashboard(opts: dict[str, Any], cfg: CameraConfig, tap: Any, body):
    """``body(dashboard)`` with the dashboard of ``--serve`` on ``tap`` (None without)."""
    from streamcap.runner import Job, effective_log
    from streamcap.web.wiring import start_dashboard

    log = effective_log(Job(command="monitor", sources=[], log=opts.get("log"), events_dir=opts.get("events_dir")))
    dashboard = start_dashboard(tap, opts.get("serve"), opts.get("auth_token"), opts.get("auth_token_file"),
                                _sources(cfg, opts), log, opts.get("events_dir"), not opts.get("no_index", False),
                                opts.get("serve_fps") or 5.0)
    try:
        return body(dashboard)
    finally:
        if dashboard is not None:
            dashboard.close()
