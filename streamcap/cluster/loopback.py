"""A real multi-node Ray cluster on one machine, each node on its own loopback address
(``ray start --node-ip-address 127.a.b.c``), for the tests and the benchmark.

Ray replaces 127.0.0.1 with the machine's network address; another loopback address keeps
every connection on 127.x. Token authentication is on (a fresh token per cluster).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    found = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    return found


class LoopbackCluster:
    """``start()`` a head and ``workers`` worker nodes; ``kill_node(ip)``; ``stop()``."""

    def __init__(self, workers: int = 1, cpus: float = 4, temp_dir: str | None = None,
                 health_check_ms: int | None = 1000, env: dict[str, str] | None = None, token: str | None = None,
                 quiet: bool = True) -> None:
        """``health_check_ms``: how often the GCS checks each node (tests notice a dead node fast;
        None: Ray's default, 3 s x 5); ``quiet``: with ``cluster.quiet``'s settings."""
        base = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}."
        last = random.sample(range(2, 250), workers + 1)
        self.ips = [base + str(n) for n in last]
        self.cpus = cpus
        # Ray's socket paths must stay short: a short folder of its own under /tmp.
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="scray", dir="/tmp")
        self.port = _free_port(self.ips[0])
        self.token = token or secrets.token_hex(16)
        from streamcap.cluster.quiet import quiet_env

        base = {**os.environ, **(env or {})}
        self.env = {**(quiet_env(base) if quiet else base), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.quiet = quiet
        if health_check_ms is not None:  # a dead node is noticed within a few seconds (defaults: 3 s x 5)
            self.env.update(RAY_health_check_period_ms=str(health_check_ms), RAY_health_check_failure_threshold="3",
                            RAY_health_check_timeout_ms=str(health_check_ms))

    @property
    def address(self) -> str:
        return f"{self.ips[0]}:{self.port}"

    @property
    def head_ip(self) -> str:
        return self.ips[0]

    def client_env(self) -> dict[str, str]:
        """What a driver needs in its environment to join (the token; the quiet settings)."""
        from streamcap.cluster.quiet import QUIET_ENV

        keys = ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED"] + (list(QUIET_ENV) if self.quiet else [])
        return {k: self.env[k] for k in keys}

    def _ray(self, *args: str, timeout: float = 180) -> None:
        proc = subprocess.run(["nice", "-n", "10", _ray_bin(), "start", *args, "--num-cpus", str(self.cpus),
                               "--disable-usage-stats"], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"ray start {' '.join(args[:2])} failed: {' | '.join(tail)}")

    def _log_monitor(self) -> list[str]:
        """Quiet: no log monitor (it tails every worker's log for drivers; ours sets log_to_driver=False)."""
        return ["--include-log-monitor=false"] if self.quiet else []

    def _head_extras(self) -> list[str]:
        """Quiet: no autoscaler monitor (a fixed cluster; the GCS, not the monitor, notices a dead
        node). Ray's client server only where Ray has it (``ray[client]``; plain ``ray`` refuses
        the flag), on a free port so that clusters side by side do not clash on 10001."""
        import importlib.util

        extras = ["--no-monitor"] if self.quiet else []
        if importlib.util.find_spec("grpc") is not None:
            extras += ["--ray-client-server-port", str(_free_port(self.head_ip))]
        return extras

    def start(self) -> "LoopbackCluster":
        self._ray("--head", "--node-ip-address", self.head_ip, "--port", str(self.port),
                  "--include-dashboard=false", "--temp-dir", self.temp_dir, *self._log_monitor(),
                  *self._head_extras())
        for ip in self.ips[1:]:
            self._ray("--address", self.address, "--node-ip-address", ip, *self._log_monitor())
        return self

    # -- processes -------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those naming its folder, and all their descendants."""
        found: dict[int, psutil.Process] = {}
        me = os.getpid()
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid != me and any(self.temp_dir in part for part in (p.info["cmdline"] or [])):
                    found[p.pid] = p
                    for c in p.children(recursive=True):
                        found[c.pid] = c
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(me, None)
        return list(found.values())

    def raylet(self, ip: str) -> psutil.Process:
        for p in self.processes():
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd and cmd[0].endswith("raylet") and f"--node_ip_address={ip}" in cmd:
                return p
        raise LookupError(f"no raylet for {ip}")

    def kill_node(self, ip: str) -> None:
        """The node dies: its raylet and everything under it (agents, actor workers) killed at once."""
        raylet = self.raylet(ip)
        victims = [raylet, *raylet.children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LoopbackCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(predicate, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out waiting for {what}")
