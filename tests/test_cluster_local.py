"""``monitor --ray local``: the one-node Ray it starts listens on loopback only (Ray's own
servers listen on every interface otherwise), more camera groups than CPUs are still placed, and
the run ends cleanly on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO, write_video

pytest.importorskip("ray", reason="pip install 'streamcap[ray]'")


def _listening(pid: int) -> list[tuple[str, int, str]]:
    procs = {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    out = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in procs and conn.status == psutil.CONN_LISTEN:
            out.append((conn.laddr.ip.removeprefix("::ffff:"), conn.laddr.port, psutil.Process(conn.pid).name()))
    return out


@pytest.mark.slow
def test_ray_local_listens_on_loopback_only(tmp_path):
    cams = "".join(f"  - {{name: cam{i}, url: '{write_video(tmp_path / f'clip{i}.mp4', n=40)}'}}\n"
                   for i in range(1, 2 + (os.cpu_count() or 1)))
    (tmp_path / "c.yaml").write_text("defaults: {no-segment: true, no-caption: true}\ncameras:\n" + cams)
    log = tmp_path / "merged.jsonl"
    driver = subprocess.Popen([sys.executable, "-m", "streamcap", "monitor", "--config", str(tmp_path / "c.yaml"),
                               "--ray", "local", "--log", str(log)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    n = 1 + (os.cpu_count() or 1)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert driver.poll() is None, driver.communicate()[1][-2000:]
            text = log.read_text() if log.exists() else ""
            sources = {json.loads(line).get("source") for line in text.splitlines()[:-1]
                       if '"event":"frame"' in line}
            if len(sources) == n:
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"frames from {n} camera groups on a {os.cpu_count()}-CPU machine")
        listening = _listening(driver.pid)
        assert len(listening) >= 3  # the driver, GCS, raylet, workers...
        assert [s for s in listening if not s[0].startswith("127.")] == []
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 130, stderr[-2000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1]["event"] == "cluster_end" and records[-1]["reason"] == "sigint"
