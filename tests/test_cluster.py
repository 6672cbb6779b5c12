"""`monitor --ray` on a real two-node Ray cluster on loopback: four RTSP cameras over two nodes,
an actor crashed and a node killed mid-run; every camera back, one merged log with every line of
every node's log exactly once, a clean end on SIGINT, and no connection off loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, read_jsonl

ray = pytest.importorskip("ray", reason="pip install 'streamcap[ray]'")

from streamcap.cluster.loopback import LoopbackCluster, wait_until  # noqa: E402

SMALL = (160, 120)


def _records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def _frames(records, camera, node=None):
    return [r for r in records if r["event"] == "frame" and r["source"] == camera
            and (node is None or r["node"] == node)]


def _ip(addr) -> str:
    return addr.ip.removeprefix("::ffff:")


def _off_loopback(pids: set[int]) -> list[tuple]:
    bad = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in pids and conn.raddr and not _ip(conn.raddr).startswith("127."):
            bad.append((conn.pid, _ip(conn.laddr), _ip(conn.raddr), conn.raddr.port, conn.status))
    return bad


def _group_pid(cluster: LoopbackCluster, local_log: Path) -> int:
    """The actor process that has this group's local log open."""
    for p in cluster.processes():
        try:
            if any(f.path == str(local_log) for f in p.open_files()):
                return p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise LookupError(local_log)


@pytest.fixture
def cluster():
    c = LoopbackCluster(workers=1, cpus=4, env={"PYTHONPATH": str(REPO)})
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.mark.slow
def test_four_cameras_two_nodes_actor_crash_and_node_loss(tmp_path, rtsp_server, cluster):
    cams = [rtsp_server(mount=f"cam{i + 1}", size=SMALL).start() for i in range(4)]
    config = tmp_path / "cameras.yaml"
    lines = ["defaults: {no-segment: true, no-caption: true, rtsp-transport: udp, read-timeout: 2,",
             "           open-timeout: 3, watchdog: 4, stats-interval: 2}", "cameras:"]
    for i, cam in enumerate(cams):
        url = cam.url.replace("rtsp://", "rtsp://admin:hunter2@") if i == 0 else cam.url
        lines.append(f"  - {{name: cam{i + 1}, url: '{url}'}}")
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "merged.jsonl"
    driver = subprocess.Popen(
        [sys.executable, "-m", "streamcap", "monitor", "--config", str(config), "--ray", cluster.address,
         "--log", str(log)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **cluster.client_env(), "PYTHONPATH": str(REPO)}, start_new_session=True)
    names = [f"cam{i + 1}" for i in range(4)]
    try:
        def all_four():
            assert driver.poll() is None, driver.communicate()[1]
            return all(len(_frames(_records(log), n)) >= 5 for n in names)
        wait_until(all_four, 120, "frames from 4 cameras")
        records = _records(log)
        placed = {n: _frames(records, n)[-1]["node"] for n in names}
        nodes = sorted(set(placed.values()))
        assert len(nodes) == 2, f"cameras not spread over the two nodes: {placed}"
        # Nothing of the run talks to anything but loopback.
        pids = {p.pid for p in cluster.processes()} | {driver.pid}
        pids |= {c.pid for c in psutil.Process(driver.pid).children(recursive=True)}
        assert _off_loopback(pids) == []

        # 1. An actor crashes: Ray restarts it, its camera reconnects.
        worker_ip = cluster.ips[1]
        on_worker = sorted(n for n in names if placed[n].startswith(worker_ip + "-"))
        on_head = sorted(n for n in names if n not in on_worker)
        crashed = on_head[0]
        local = next((tmp_path / "merged.jsonl.nodes").glob(f"{crashed}.*.jsonl"))
        os.kill(_group_pid(cluster, local), signal.SIGKILL)
        wait_until(lambda: any(r["event"] in ("actor_restarted", "camera_moved") and r.get("group") == crashed
                               for r in _records(log)), 60, "the crashed actor restarted")
        wait_until(lambda: sum(1 for r in _records(log) if r["event"] == "source_status"
                               and r["source"] == crashed and r["status"] == "connected") >= 2, 60,
                   "the crashed actor's camera reconnected")

        # 2. A node dies: its cameras are re-placed on the head node within 30 s.
        before = len(_records(log))
        cluster.kill_node(worker_ip)
        head = next(n for n in nodes if n.startswith(cluster.head_ip + "-"))

        def back(n):
            return len([r for r in _records(log)[before:] if r["event"] == "frame" and r["source"] == n
                        and r["node"] == head]) >= 3
        wait_until(lambda: all(back(n) for n in on_worker), 30, "the lost node's cameras back on the head node")
        moved = [r for r in _records(log) if r["event"] == "camera_moved"]
        for n in on_worker:
            rec = next(r for r in moved if r["source"] == n and r["to"] == head)
            assert rec["from"] == placed[n] and rec["outage_s"] > 0
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 130, stderr
    records = read_jsonl(log)  # every line complete
    assert records[0]["event"] == "cluster" and records[-1]["event"] == "cluster_end"
    assert records[-1]["reason"] == "sigint"
    assert "hunter2" not in log.read_text() and "hunter2" not in stderr
    # Cameras on healthy nodes never noticed: connected once, never lost.
    for n in on_head[1:]:
        assert [r["status"] for r in records if r["event"] == "source_status" and r["source"] == n] == ["connected", "ended"]
    # One log: every line of every node's local log, exactly once, with its node.
    got: dict[tuple[str, str], list[int]] = {}
    for r in records:
        if "seq" in r:
            got.setdefault((r["group"], r["node"].rsplit("-", 1)[1]), []).append(r["seq"])
    locals_ = sorted((tmp_path / "merged.jsonl.nodes").glob("*.jsonl"))
    assert len(locals_) >= 5  # 4 groups + the re-placed ones
    for path in locals_:
        group, node_id, _ = path.name.split(".")
        n = len(path.read_text().splitlines())
        assert sorted(got.pop((group, node_id[:6]))) == list(range(1, n + 1)), path.name
    assert got == {}
    for n in names:  # each camera's run ends cleanly on its final node
        assert _frames(records, n)
