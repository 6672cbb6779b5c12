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


def monitor_cameras(opts: dict[str, Any]) -> None:
    from streamcap.cluster.jobs import group_job, single_job

    unsupported = [flag for key, flag in (("serve", "--serve"), ("alerts", "--alerts"), ("alert_object", "--alert-object"),
                                          ("alert_caption", "--alert-caption"), ("webhook", "--webhook"),
                                          ("mqtt", "--mqtt"), ("metrics_port", "--metrics-port"))
                   if opts.get(key)]
    if unsupported:  # refused, never silently ignored
        raise BadInputError(f"{', '.join(unsupported)} cannot be combined with --config/--ray yet; "
                            "give the cameras as URLs on the command line")
    cfg = cameras(opts)
    argv = sys.argv[1:]
    if opts.get("ray") is None:
        from streamcap.cli.run import _run

        _run(single_job(cfg, opts, log=opts["log"], argv=argv))
        return
    address = opts["ray"]
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BadInputError("--ray needs Ray: pip install 'streamcap[ray]'") from None
    if not (address in ("local", "auto") or ":" in address):
        raise BadInputError(f"--ray must be local, auto or HOST:PORT, got {address!r}")
    if opts.get("log") is not None:
        from streamcap.sinks import check_output_path

        check_output_path(opts["log"], [], append=True)
    if opts.get("events_dir") is not None:
        raise BadInputError("--events-dir is not supported with --ray yet (snapshots would stay on each node)")
    jobs = {name: group_job(g, opts, log=None, argv=argv) for name, g in cfg.groups.items()}
    for job in jobs.values():
        job.duration_s = None  # the driver ends the run; each actor runs until told
        job.index = False  # the driver keeps the one search index, beside the merged log
        job.stats = False  # no table inside an actor
    from streamcap.cluster.driver import run_cluster

    code = run_cluster(cfg, jobs, address=address, log_path=opts["log"], local_dir=local_log_dir(opts["log"]),
                       duration_s=opts.get("duration"), console=err_console,
                       index=not opts.get("no_index", False))
    if code:
        raise typer.Exit(code)
