"""Ray settings that cut what Ray's own daemons spend while a camera cluster merely runs
(measured with ``python -m streamcap.cluster.bench``; README, Ray). Each is a ``RAY_<name>``
environment variable of Ray's configuration, read by every Ray process a node starts, so they
must be set where ``ray start`` runs (or before ``--ray local`` starts Ray); a value already in
the environment wins.

- metrics collection off: no Prometheus export from every worker and the node's agent
  (streamcap's own ``--metrics-port`` and ``/metrics`` come from the records, not from Ray);
- task events off: workers stop reporting each call to the GCS every second (Ray's
  state API and dashboard timeline go without them; restarts and placement do not use them);
- no prestarted idle workers: an actor's worker starts when it is placed;
- the memory monitor polls once a second instead of four times (it still kills a worker
  before the node runs out of memory).
"""

from __future__ import annotations

import os

QUIET_ENV = {
    "RAY_enable_metrics_collection": "0",
    "RAY_enable_task_events": "0",
    "RAY_enable_worker_prestart": "0",
    "RAY_memory_monitor_refresh_ms": "1000",
}


def quiet_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the quiet settings it does not set itself."""
    base = dict(os.environ if env is None else env)
    return {**QUIET_ENV, **base}


def apply() -> None:
    """Set the quiet settings in this process's environment (before it starts Ray)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
