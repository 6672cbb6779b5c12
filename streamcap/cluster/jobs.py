"""From ``monitor``'s options and a camera config to engine Jobs: one Job per camera group.

Per-camera options override the command line's; engine options are per group (one engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamcap.capture import SourceConfig
from streamcap.cluster.config import CameraConfig, Camera, Group
from streamcap.errors import BadInputError


def _source(cam: Camera, opts: dict[str, Any]) -> SourceConfig:
    from streamcap.cli.run import _live_queue

    o = {**opts, **cam.options}
    return SourceConfig(uri=cam.url, name=cam.name, kind="webcam" if cam.url.isdigit() else "stream",
                        drop=o["drop"], stride=o["stride"],
                        queue_size=_live_queue(o["queue_size"], o["seg_every"], o["no_segment"]),
                        rtsp_transport=o["rtsp_transport"], max_retries=o["max_retries"],
                        open_timeout_s=o["open_timeout"], read_timeout_s=o["read_timeout"],
                        first_frame_timeout_s=o["first_frame_timeout"], watchdog_s=o["watchdog"],
                        backoff_max_s=o["backoff_max"])


def group_job(group: Group, opts: dict[str, Any], *, log: Path | None, argv: list[str]):
    """The Job that runs one group's cameras (what an actor, or plain monitor, runs)."""
    from streamcap.cli.run import _events_options, _model_options
    from streamcap.runner import Job

    merged = {**opts, **group.engine_options}
    return Job(command="monitor", sources=[_source(c, opts) for c in group.cameras], log=log, stats=opts.get("stats", False),
               argv=argv, progress=False, duration_s=merged.get("duration"), **_events_options(merged),
               **_model_options(merged))


def single_job(cfg: CameraConfig, opts: dict[str, Any], *, log: Path | None, argv: list[str]):
    """Without Ray every camera runs in one engine, so all groups must agree on engine options."""
    groups = list(cfg.groups.values())
    first = groups[0]
    for group in groups[1:]:
        if group.engine_options != first.engine_options:
            diff = sorted(set(group.engine_options.items()) ^ set(first.engine_options.items()), key=str)
            name = diff[0][0].replace("_", "-") if diff else "options"
            raise BadInputError(f"camera {group.cameras[0].name!r}: {name} differs from camera "
                                f"{first.cameras[0].name!r}; without --ray all cameras run in one engine")
    merged = Group("all", cameras=list(cfg.cameras))
    job = group_job(Group("all", cameras=[first.cameras[0]]), opts, log=log, argv=argv)
    job.sources = [_source(c, opts) for c in merged.cameras]
    return job
