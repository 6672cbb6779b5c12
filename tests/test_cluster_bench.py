"""The Ray benchmark: the saturated mode (no Ray needed: files read as fast as the engine takes
them, nothing dropped, the clip looped without re-encoding), the overhead as the median of
back-to-back pairs, and the fixed costs of an idle node, actor and driver (on a real node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import pytest
from conftest import REPO

from streamcap.cluster import bench

CLIP = REPO / "samples" / "vtest_8s.mp4"


def _frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_saturated_sources_are_unpaced_files_that_drop_nothing():
    live = bench._job(["a"], CLIP).sources[0].resolved()
    full = bench._job(["a", "b"], CLIP, saturate=True).sources
    assert live.realtime and live.drop == "latest"
    assert [s.resolved().name for s in full] == ["a", "b"]
    assert all(not s.realtime and s.resolved().drop == "block" for s in full)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_looped_clip_has_every_frame_n_times_and_plain_run_counts_them(tmp_path):
    one = _frames(CLIP)
    clip = bench.looped(CLIP, 3, tmp_path)
    assert _frames(clip) == 3 * one
    fig = bench.run_plain(1, 0.0, clip, saturate=True)
    assert fig["frames"] == 3 * one  # nothing dropped
    assert fig["steady_fps"] > 0 and fig["steady_cpu_ms_per_frame"] > 0


def test_overhead_is_the_median_of_back_to_back_pairs():
    pairs = [({"steady_cpu_ms_per_frame": 2.0, "steady_fps": 100.0}, {"steady_cpu_ms_per_frame": 2.2, "steady_fps": 80.0}),
             ({"steady_cpu_ms_per_frame": 4.0, "steady_fps": 90.0}, {"steady_cpu_ms_per_frame": 6.0, "steady_fps": 90.0}),
             ({"steady_cpu_ms_per_frame": 3.0}, {"steady_cpu_ms_per_frame": 3.0}),
             ({"steady_cpu_ms_per_frame": None}, {"steady_cpu_ms_per_frame": 1.0})]  # a run without a window
    cpu = bench.pair_overheads(pairs)
    assert cpu["pairs"] == 3 and cpu["each"] == [0.1, 0.5, 0.0]
    assert cpu["median"] == 0.1  # not the ratio of the medians (3.0 / 3.0 - 1 = 0)
    assert (cpu["plain_median"], cpu["ray_median"]) == (3.0, 3.0)
    fps = bench.pair_overheads(pairs, key="steady_fps", higher_is_worse=False)
    assert fps["each"] == [0.25, 0.0] and fps["median"] == 0.125  # plain's frames a second over Ray's
    assert bench.pair_overheads([]) == {"pairs": 0}


def test_overhead_mode_needs_at_least_one_pair():
    with pytest.raises(SystemExit, match="--repeat"):
        bench.main(["--overhead", "--repeat", "0"])


def test_idle_mode_names_each_daemon_and_refuses_no_time():
    assert [bench._role(c) for c in ("/x/ray/core/src/ray/gcs/gcs_server --log_dir=/t", "/x/raylet/raylet --store",
                                     "ray::DashboardAgent", "ray::RuntimeEnvAgent", "python /x/dashboard/dashboard.py",
                                     "python -u /x/autoscaler/_private/monitor.py", "ray::IdleActor")] == \
        ["gcs_server", "raylet", "dashboard_agent", "runtime_env_agent", "dashboard", "autoscaler_monitor", "other"]
    with pytest.raises(SystemExit, match="--idle"):
        bench.main(["--idle", "0"])


@pytest.mark.slow
def test_idle_mode_measures_a_real_node_an_actor_and_its_answers(tmp_path):
    pytest.importorskip("ray", reason="pip install 'streamcap[ray]'")
    # a process of its own: Ray reads its token when imported, and this one may have imported it
    subprocess.run([sys.executable, "-m", "streamcap.cluster.bench", "--idle", "2", "--json", str(tmp_path / "idle.json")],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    out = json.loads((tmp_path / "idle.json").read_text())
    assert {"gcs_server", "raylet"} <= set(out["daemons_cores"])
    assert "autoscaler_monitor" not in out["daemons_cores"]  # quiet: no monitor
    assert out["answers_per_s"] > 0 and out["idle_actor_cores"] >= 0
    assert out["cpu_ms_per_answer_driver"] is not None and out["quiet"] is True
