"""Ray settings that cut what Ray's own daemons spend while a camera cluster merely runs
(measured with ``python -m streamcap.cluster.bench``; README, Ray). Each is a ``RAY_<name>``
environment variable of Ray's configuration, read by every Ray process a node starts, so they
must be set where ``ray start`` runs (or before ``--ray local`` starts Ray); a value already in
the environment wins.

- metrics collection off: no Prometheus export from every worker and the node's agent
  (streamcap's own ``--metrics-port`` and ``/metrics`` come from the records, not from Ray);
- task events off: workers stop reporting each call to the GCS every second (Ray's
  state API and dashboard timeline go without them; restarts and placement do not use them);
- no prestarted idle workers, neither at start nor when the first driver connects: an actor's
  worker starts when it is placed (a second or two, at start and after a fault). An idle
  worker is not free: Ray wakes every worker's main thread every 10 ms to check for signals,
  0.007 of a core each here, and the first driver used to get two;
- the memory monitor polls once a second instead of four times (it still kills a worker
  before the node runs out of memory);
- the raylet's housekeeping timers tick less often: the object store's disk check every 1 s
  (not 0.1 s), the object manager's retry timer 1 s (0.1 s), resource reports to the GCS 1 s
  (0.1 s; placement and restarts still see a node's resources within a second), idle-worker
  reaping 1 s (0.2 s), the global-GC check 10 s (0.1 s), event-loop lag samples (a metric) 60 s;
- the node's agents learn that their raylet died from a pipe instead of polling its pid every
  0.4 s.

Measured on an idle one-node cluster (``ray start --no-monitor``, plain ``ray``, 30 s): the
timers take Ray's daemons from 0.0127 to 0.0080 of a core (the raylet 0.0063 -> 0.0030).
"""

from __future__ import annotations

import os

QUIET_ENV = {
    "RAY_enable_metrics_collection": "0",
    "RAY_enable_task_events": "0",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_memory_monitor_refresh_ms": "1000",
    "RAY_local_fs_monitor_interval_ms": "1000",
    "RAY_object_manager_timer_freq_ms": "1000",
    "RAY_raylet_report_resources_period_milliseconds": "1000",
    "RAY_kill_idle_workers_interval_ms": "1000",
    "RAY_raylet_check_gc_period_milliseconds": "10000",
    "RAY_io_context_event_loop_lag_collection_interval_ms": "60000",
    "RAY_enable_pipe_based_agent_to_parent_health_check": "1",
}


def quiet_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the quiet settings it does not set itself."""
    base = dict(os.environ if env is None else env)
    return {**QUIET_ENV, **base}


def apply() -> None:
    """Set the quiet settings in this process's environment (before it starts Ray)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def shell_exports(env: dict[str, str] | None = None) -> str:
    """``export`` lines for a shell that runs ``ray start`` (values already set there win)."""
    import shlex

    base = os.environ if env is None else env
    return "\n".join(f"export {k}={shlex.quote(base.get(k, v))}" for k, v in QUIET_ENV.items())


if __name__ == "__main__":  # eval "$(python -m streamcap.cluster.quiet)" before `ray start`
    print(shell_exports())
