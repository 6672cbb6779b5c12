"""``cluster.quiet``: the Ray settings that cut what Ray's daemons spend reach every process of a
quiet loopback node (which also runs without the autoscaler monitor), and the shell lines for a
real cluster's ``ray start`` carry the same settings, a value already set winning."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from conftest import REPO
from streamcap.cluster.quiet import QUIET_ENV, quiet_env, shell_exports


def test_shell_exports_set_every_setting_and_keep_a_value_already_set():
    lines = subprocess.run([sys.executable, "-m", "streamcap.cluster.quiet"], cwd=REPO, capture_output=True,
                           text=True, check=True, env={**os.environ, "RAY_memory_monitor_refresh_ms": "500"}).stdout
    script = lines + "\nenv\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    got = dict(line.split("=", 1) for line in subprocess.run(["bash", "-c", script], env=env, capture_output=True,
                                                              text=True, check=True).stdout.splitlines() if "=" in line)
    assert {k: got[k] for k in QUIET_ENV} == {**QUIET_ENV, "RAY_memory_monitor_refresh_ms": "500"}
    assert shell_exports({"RAY_enable_task_events": "it's on"}).count("'it'\"'\"'s on'") == 1  # quoted for the shell
    assert quiet_env({"RAY_enable_task_events": "1"})["RAY_enable_task_events"] == "1"


@pytest.mark.slow
def test_a_quiet_loopback_node_runs_every_daemon_with_the_settings_and_no_monitor():
    pytest.importorskip("ray", reason="pip install 'streamcap[ray]'")
    from streamcap.cluster.loopback import LoopbackCluster

    def monitors(cluster) -> int:
        return sum("autoscaler/_private/monitor.py" in " ".join(p.cmdline()) for p in cluster.processes())

    with LoopbackCluster(workers=0, cpus=1, health_check_ms=None, quiet=False) as loud:
        assert monitors(loud) == 1  # what the check below would see
    with LoopbackCluster(workers=0, cpus=1, health_check_ms=None) as cluster:
        procs = cluster.processes()
        names = {p.pid: " ".join(p.cmdline()) for p in procs}
        assert any("raylet" in n for n in names.values()) and any("gcs_server" in n for n in names.values())
        assert monitors(cluster) == 0
        checked = []
        for p in procs:
            try:
                env = p.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "PATH" not in env:  # a worker's process title overwrites where its environment was
                continue
            assert {k: env.get(k) for k in QUIET_ENV} == QUIET_ENV, names[p.pid]
            checked.append(names[p.pid])
        assert any("raylet" in n for n in checked) and any("gcs_server" in n for n in checked)
