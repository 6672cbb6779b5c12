"""One view on a real two-node Ray cluster on loopback: a camera's own alert rule fires in its
actor (and only for that camera), the alert's snapshot reaches the driver's events folder as
bytes over Ray, the driver's metrics count it (and their run-wide figures are both groups'),
and a watched dashboard tile gets JPEG frames from the actors. The driver runs in a process of its own (Ray reads its token when imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import REPO, write_video  # noqa: E402


def drive(address: str, out: Path) -> None:
    """The driver: a camera per group (one per node), cam2 with its own alert rule."""
    from types import SimpleNamespace

    from streamcap.capture import SourceConfig
    from streamcap.cluster.bench import _Factory
    from streamcap.cluster.config import parse
    from streamcap.cluster.driver import run_cluster
    from streamcap.cluster.notify import group_rules
    from streamcap.metrics import Metrics
    from streamcap.pipeline import PipelineConfig
    from streamcap.runner import Job
    from streamcap.tap import RecordTap
    from streamcap.web.live import LiveHub
    from streamcap.web.server import WebApp

    clip = write_video(out / "clip.mp4", n=120, fps=10.0)  # 12 s played in real time
    cfg = parse({"cameras": [{"name": "cam1", "url": "rtsp://h/1"},
                             {"name": "cam2", "url": "rtsp://h/2", "alerts": [{"object": "person", "cooldown": 3600}]}]},
                env={})
    rules = group_rules(cfg, {})
    jobs, views = {}, {}
    for name, group in cfg.groups.items():
        group.num_cpus = 2  # one group per node
        src = SourceConfig(str(clip), name=group.cameras[0].name, kind="file", realtime=True, drop="latest", queue_size=1)
        jobs[name] = Job(command="monitor", sources=[src], progress=False, index=False,
                         pipeline=PipelineConfig(stats_interval_s=1, seg_every=1))
        views[name] = {"rules": rules[name], "live": True, "events_dir": str(out / "events"), "events_max_mb": 10}
    hub = LiveHub(["cam1", "cam2"], max_fps=5)
    app = WebApp(hub=hub)
    tap, metrics = RecordTap(), Metrics()
    tap.subscribe(app.on_record)
    tap.subscribe(metrics.on_record)
    got = {}

    def viewer():
        slot = hub.slot("cam1")
        with hub.watching(slot):
            got["frame"] = hub.next_jpeg(slot, 0, 120)
    watcher = threading.Thread(target=viewer, daemon=True)
    watcher.start()
    code = run_cluster(cfg, jobs, address=address, log_path=out / "merged.jsonl", local_dir=str(out / "nodes"),
                       stage_factory=_Factory(1.0, person=True), install_signals=False, tap=tap, views=views,
                       events_dir=out / "events", dashboard=SimpleNamespace(hub=hub, app=app))
    watcher.join(5)
    text = metrics.text()
    frame = got.get("frame")
    (out / "result.json").write_text(json.dumps({
        "code": code, "metrics": text.decode() if isinstance(text, bytes) else text,
        "jpeg_head": frame[1][:2].hex() if frame else None, "hub_encoded": hub.encoded}))


@pytest.mark.slow
def test_alerts_snapshots_and_live_tiles_over_two_nodes(tmp_path):
    pytest.importorskip("ray", reason="pip install 'streamcap[ray]'")
    from streamcap.cluster.loopback import LoopbackCluster

    with LoopbackCluster(workers=1, cpus=2, env={"PYTHONPATH": str(REPO)}) as cluster:
        proc = subprocess.run([sys.executable, __file__, cluster.address, str(tmp_path)], cwd=REPO, timeout=240,
                              env={**os.environ, **cluster.client_env(), "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["code"] == 0
    records = [json.loads(line) for line in (tmp_path / "merged.jsonl").read_text().splitlines()]
    frames = [r for r in records if r["event"] == "frame"]
    assert {r["source"] for r in frames} == {"cam1", "cam2"} and len({r["node"] for r in frames}) == 2
    alerts = [r for r in records if r["event"] == "alert"]
    assert [(a["source"], a["rule"]) for a in alerts] == [("cam2", "object:person")]
    assert (tmp_path / "events" / alerts[0]["snapshot"]).read_bytes()[:2] == b"\xff\xd8"
    assert 'streamcap_alerts_total{camera="cam2",rule="object:person"} 1.0' in result["metrics"]
    ends = [r for r in records if r["event"] == "end"]  # one per group, each from its own actor
    assert sorted(e["group"] for e in ends) == ["cam1", "cam2"]
    total = sum(e["frames_read"] for e in ends)  # run-wide: both groups, not the last to end
    assert f'streamcap_frames_read_total{{camera="all"}} {float(total)}' in result["metrics"]
    assert result["jpeg_head"] == "ffd8" and result["hub_encoded"] == 0  # the actor's JPEG, as sent


if __name__ == "__main__":
    drive(sys.argv[1], Path(sys.argv[2]))
