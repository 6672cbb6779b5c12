"""Figures for ``monitor --ray`` (a benchmark, not a test): throughput and latency for 1, 2, 4, 8
cameras on 1 and 2 local Ray nodes, and the Ray path's overhead against plain ``monitor``.

    python -m streamcap.cluster.bench --cameras 1,2,4,8 --nodes 1,2 [--model-ms 2] [--json out.json]
    python -m streamcap.cluster.bench --cameras 1,4,8 --nodes 1 --saturate
    python -m streamcap.cluster.bench --cameras 1,4,8 --overhead --repeat 3 --loops 3
    python -m streamcap.cluster.bench --idle 30

Each camera plays the sample clip at its own frame rate (a live source: newest frame wins); the
model is a fake that sleeps ``--model-ms`` per frame, so the engine and the Ray path are what is
measured. With ``--saturate`` each camera reads the clip (played ``--loops`` times in a row,
20 by default) as fast as the engine takes it, nothing dropped: the frames a second are then the
throughput, ``overhead_*_throughput`` compares plain monitor's with the Ray path's, and the CPU
per frame is the marginal cost of a frame, with Ray's fixed idle cost spread over many more
frames than at a camera's pace. Latency is from a frame's capture to its record in the driver's merged log (for
plain monitor: to its record in the log). Both write their logs (plain: one; Ray: each actor's
local log and the driver's merged log). CPU is the CPU time of every process involved (plain:
the monitor process; Ray: the driver and every process of the cluster, Ray's own included),
per frame, and for Ray also split into streamcap's processes (driver and actors) and Ray's own
daemons and idle workers. The clusters run with Ray's default health checks and, unless
``--loud``, with ``cluster.quiet``'s settings.

``--overhead`` measures only the Ray path's overhead, which single runs of the above leave
uncertain (the same configuration moves by tens of percent between runs): on one node, plain
monitor and the Ray path with all cameras in one actor run in turn, each camera count
``--repeat`` times, and the overhead is the median of the pairs' ratios (each pair runs back
to back, so a change in the machine's load hits both). The one-node cluster stays up
throughout, idle while plain monitor runs.

``--idle SECONDS`` measures the Ray path's fixed costs, those that do not grow with the frames:
what an idle one-node cluster's processes spend, then an idle actor (as ``CameraGroup`` is
made: threaded, half a CPU) and this driver, then the same while the driver asks the actor
back to back as the cluster driver does (each call answered after ``LINGER_S``): the CPU per
answer in each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from streamcap.capture import SourceConfig

CLIP = Path(__file__).resolve().parents[2] / "samples" / "vtest_8s.mp4"


class FakeModel:
    """Sleeps per frame, finds nothing, or with ``person`` one person in the frame's middle
    (picklable: Ray sends it to the actors)."""

    name = "fake"
    batch_size = 1

    def __init__(self, ms: float = 2.0, person: bool = False) -> None:
        self.ms = ms
        self.person = person

    def __call__(self, frames):
        time.sleep(self.ms / 1000 * len(frames))
        return [self._person(f.image.shape) if self.person else None for f in frames]

    @staticmethod
    def _person(shape):
        import numpy as np

        from streamcap.types import Detections

        h, w = shape[:2]
        return Detections(boxes=np.array([[w / 4, h / 4, w * 3 / 4, h * 3 / 4]], np.float32),
                          scores=np.array([0.9], np.float32), labels=np.array([1]),
                          names=["__background__", "person"], masks=None)


class _Factory:
    def __init__(self, ms: float, person: bool = False) -> None:
        self.ms = ms
        self.person = person

    def __call__(self) -> FakeModel:
        return FakeModel(self.ms, self.person)


class IdleActor:
    """Does nothing but answer: what an actor costs before it runs anything (``--idle``)."""

    def pid(self) -> int:
        return os.getpid()

    def wait(self, seconds: float) -> int:
        time.sleep(seconds)
        return 1


def _job(names: list[str], clip: Path, saturate: bool = False):
    """Live-paced cameras (newest frame wins), or with ``saturate`` files read as fast as the
    engine takes them (nothing dropped): then the frames a second are the throughput."""
    from streamcap.pipeline import PipelineConfig
    from streamcap.runner import Job

    if saturate:
        sources = [SourceConfig(uri=str(clip), name=n, kind="file") for n in names]
    else:
        sources = [SourceConfig(uri=str(clip), name=n, kind="file", realtime=True, drop="latest", queue_size=1)
                   for n in names]
    return Job(command="monitor", sources=sources, progress=False, index=False,
               pipeline=PipelineConfig(stats_interval_s=0, seg_every=1))


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Collector:
    """A record subscriber noting when each frame record arrived. CPU is measured in steady
    state: from the moment every camera has delivered a frame (actors started, models loaded)
    to the last frame, over ``procs()``."""

    def __init__(self, cameras: int, procs) -> None:
        self.cameras, self.procs = cameras, procs
        self.arrivals: list[tuple[str, float, float]] = []  # camera, frame time, arrival
        self.seen: set[str] = set()
        self.window: list = []  # [(t, cpu, n_frames, processes)] at the start and the last frame

    def __call__(self, record: dict) -> None:
        if record.get("event") == "frame" and record.get("frame_time"):
            self.arrivals.append((record["source"], _ts(record["frame_time"]), time.time()))
            if len(self.seen) < self.cameras:
                self.seen.add(record["source"])
                if len(self.seen) == self.cameras:
                    procs = self.procs()
                    self.window = [(time.monotonic(), _cpu(procs), len(self.arrivals), procs)]
                    self.start_by = _by_process(procs)
            elif self.window:
                self.window[1:] = [(time.monotonic(), None, len(self.arrivals), None)]

    def figures(self) -> dict:
        if not self.arrivals:
            return {"frames": 0}
        lat = sorted((a - f) * 1000 for _, f, a in self.arrivals)
        fps = 0.0  # each camera's frames over its own span (actors start at different times)
        for cam in {c for c, _, _ in self.arrivals}:
            times = [f for c, f, _ in self.arrivals if c == cam]
            if len(times) > 1 and times[-1] > times[0]:
                fps += (len(times) - 1) / (times[-1] - times[0])
        fig = {"frames": len(lat), "fps": round(fps, 1),
               "latency_p50_ms": round(statistics.median(lat), 1),
               "latency_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1)}
        if getattr(self, "end_by", None) and len(self.window) == 2:
            spent = {pid: (name, cpu - self.start_by.get(pid, (name, 0.0))[1]) for pid, (name, cpu) in self.end_by.items()}
            frames = self.window[1][2] - self.window[0][2]
            by_name: dict[str, float] = {}
            for name, cpu in spent.values():
                by_name[name] = by_name.get(name, 0.0) + cpu
            if os.environ.get("STREAMCAP_BENCH_BREAKDOWN"):
                fig["steady_cpu_s_by_process"] = {k: round(v, 2) for k, v in by_name.items()}
            ours = sum(cpu for pid, (name, cpu) in spent.items() if pid == os.getpid() or "CameraGroup" in name)
            if frames > 0:  # streamcap's processes (driver, actors) apart from Ray's own daemons and idle workers
                fig["steady_cpu_ms_per_frame_streamcap"] = round(1000 * ours / frames, 2)
                fig["steady_cpu_ms_per_frame_ray_daemons"] = round(1000 * (sum(by_name.values()) - ours) / frames, 2)
        if len(self.window) == 2:
            (t0, c0, n0, procs), (t1, _, n1, _) = self.window
            fig["steady_cpu_ms_per_frame"] = round(1000 * (self.end_cpu - c0) / (n1 - n0), 2) if n1 > n0 else None
            fig["steady_cpu_cores"] = round((self.end_cpu - c0) / (t1 - t0), 2) if t1 > t0 else None
            fig["steady_fps"] = round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None
        return fig

    def finish(self) -> None:
        """CPU of the same processes now (call right after the last frame)."""
        self.end_cpu = _cpu(self.window[0][3]) if self.window else 0.0
        self.end_by = _by_process(self.window[0][3]) if self.window else {}


def _by_process(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    out = {}
    for p in procs:
        try:
            out[p.pid] = (p.name(), _cpu([p]))
        except psutil.NoSuchProcess:
            pass
    return out


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def run_plain(n: int, model_ms: float, clip: Path, saturate: bool = False) -> dict:
    from rich.console import Console

    from streamcap.runner import run_job

    me = psutil.Process()
    coll = Collector(n, lambda: [me])
    t0 = time.monotonic()

    def on_record(record: dict) -> None:
        coll(record)
        if record.get("event") == "end":
            coll.finish()
    with tempfile.TemporaryDirectory() as tmp:  # with its log, as the Ray path writes logs
        job = _job([f"cam{i + 1}" for i in range(n)], clip, saturate)
        job.log = Path(tmp) / "plain.jsonl"
        run_job(job, console=Console(stderr=True, quiet=True), install_signals=False, stage=FakeModel(model_ms),
                on_record=on_record)
    fig = coll.figures()
    fig.update(wall_s=round(time.monotonic() - t0, 1))
    return fig


def run_ray(n: int, model_ms: float, clip: Path, cluster, one_group: bool = False, linger_s: float | None = None,
            saturate: bool = False) -> dict:
    from streamcap.cluster.config import Camera, CameraConfig, Group
    from streamcap.cluster.driver import LINGER_S, run_cluster
    from streamcap.tap import RecordTap

    linger_s = LINGER_S if linger_s is None else linger_s

    cams = [Camera(name=f"cam{i + 1}", url=str(clip), group="all" if one_group else f"cam{i + 1}") for i in range(n)]
    groups: dict[str, Group] = {}
    for c in cams:
        groups.setdefault(c.group, Group(c.group, num_cpus=0.5)).cameras.append(c)
    jobs = {name: _job([c.name for c in g.cameras], clip, saturate) for name, g in groups.items()}
    coll = Collector(n, lambda: [psutil.Process(), *cluster.processes()])
    ends = []

    def on_record(record: dict) -> None:
        coll(record)
        if record.get("event") == "end":
            ends.append(1)
            if len(ends) == len(groups):
                coll.finish()
    tap = RecordTap()
    tap.subscribe(on_record)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        run_cluster(CameraConfig(cameras=cams, groups=groups), jobs, address=cluster.address,
                    log_path=Path(tmp) / "merged.jsonl",
                    local_dir=tmp, stage_factory=_Factory(model_ms), install_signals=False, tap=tap, index=False,
                    linger_s=linger_s)
    fig = coll.figures()
    fig.update(wall_s=round(time.monotonic() - t0, 1), linger_s=linger_s)
    fig["cameras_with_frames"] = len({r[0] for r in coll.arrivals})
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", default="1,2,4,8")
    ap.add_argument("--nodes", default="1,2")
    ap.add_argument("--model-ms", type=float, default=2.0)
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--loud", action="store_true", help="without cluster.quiet's Ray settings (for comparison)")
    ap.add_argument("--saturate", action="store_true",
                    help="read the clip as fast as the engine takes it (nothing dropped): frames a second are "
                         "the throughput, and the overhead is plain monitor's throughput over the Ray path's")
    ap.add_argument("--overhead", action="store_true",
                    help="only the overhead on one node: plain monitor and all cameras in one actor, in turn, "
                         "--repeat times; the median of the pairs' ratios")
    ap.add_argument("--repeat", type=int, default=3, help="pairs per camera count with --overhead (default 3)")
    ap.add_argument("--idle", type=float, default=None, metavar="SECONDS",
                    help="only the fixed costs: an idle node's daemons, an idle actor and the driver, and the CPU "
                         "per answer, each over SECONDS")
    ap.add_argument("--loops", type=int, default=None,
                    help="play the clip this many times in a row (default: 1; 20 with --saturate)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.cameras.split(",")]
    if args.repeat < 1:
        raise SystemExit("error: --repeat must be 1 or more")
    if args.idle is not None:
        if not args.idle > 0:
            raise SystemExit("error: --idle must be more than 0 seconds")
        out = idle_costs(args)
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
        return
    loops = args.loops if args.loops is not None else (20 if args.saturate else 1)
    with tempfile.TemporaryDirectory(prefix="streamcap-bench-") as tmp:
        clip = looped(args.clip, loops, Path(tmp)) if loops > 1 else args.clip
        (_overhead if args.overhead else _main)(args, counts, clip, loops)


def _role(cmdline: str) -> str:
    for key, name in (("gcs_server", "gcs_server"), ("raylet", "raylet"), ("DashboardAgent", "dashboard_agent"),
                      ("RuntimeEnvAgent", "runtime_env_agent"), ("dashboard.py", "dashboard"),
                      ("autoscaler", "autoscaler_monitor"), ("log_monitor", "log_monitor"),
                      ("client", "ray_client_server")):
        if key in cmdline:
            return name
    return "other"


def _cores(procs: list[psutil.Process], seconds: float, busy=None) -> dict[int, float]:
    """Each process's CPU over ``seconds`` (while ``busy()`` runs, if given, else asleep), in cores."""
    before = {p.pid: _cpu([p]) for p in procs}
    t0 = time.monotonic()
    if busy is None:
        time.sleep(seconds)
    else:
        busy(t0 + seconds)
    span = time.monotonic() - t0
    return {p.pid: (_cpu([p]) - before[p.pid]) / span for p in procs}


def idle_costs(args) -> dict:
    """The Ray path's fixed costs (see the module's notes on ``--idle``)."""
    from streamcap.cluster.driver import LINGER_S

    seconds = args.idle
    cluster = _start_cluster(args, 1)
    import ray  # after _start_cluster: Ray reads the token when imported

    out: dict = {"mode": "idle", "seconds": seconds, "quiet": not args.loud, "load_before": os.getloadavg(),
                 "ray": ray.__version__, "dashboard_extras": _dashboard_extras()}
    try:
        time.sleep(5)  # past the node's start
        procs = cluster.processes()
        names = {}
        for p in procs:
            try:
                names[p.pid] = _role(" ".join(p.cmdline()))
            except psutil.NoSuchProcess:
                names[p.pid] = "other"
        by_role: dict[str, float] = {}
        for pid, cores in _cores(procs, seconds).items():
            by_role[names[pid]] = by_role.get(names[pid], 0.0) + cores
        out["daemons_cores"] = {k: round(v, 4) for k, v in sorted(by_role.items())}
        out["daemons_cores_total"] = round(sum(by_role.values()), 4)
        actor = ray.remote(IdleActor).options(num_cpus=0.5, max_concurrency=4).remote()
        me, worker = psutil.Process(), psutil.Process(ray.get(actor.pid.remote()))
        time.sleep(2)
        idle = _cores([me, worker], seconds)
        out["idle_actor_cores"], out["idle_driver_cores"] = round(idle[worker.pid], 4), round(idle[me.pid], 4)
        calls = [0]

        def ask(until: float) -> None:
            while time.monotonic() < until:
                ray.get(actor.wait.remote(LINGER_S))
                calls[0] += 1
        busy = _cores([me, worker], seconds, busy=ask)
        rate = calls[0] / seconds
        out["answers_per_s"] = round(rate, 2)
        out["cpu_ms_per_answer_driver"] = round(1000 * (busy[me.pid] - idle[me.pid]) / rate, 2)
        out["cpu_ms_per_answer_actor"] = round(1000 * (busy[worker.pid] - idle[worker.pid]) / rate, 2)
        ray.kill(actor)
    finally:
        ray.shutdown()
        cluster.stop()
    return out


def _dashboard_extras() -> bool:
    """Whether Ray's dashboard extras are installed (``ray[default]``: its daemons then do more)."""
    from ray._private.utils import get_dashboard_dependency_error

    return get_dashboard_dependency_error() is None


def looped(clip: Path, loops: int, folder: Path) -> Path:
    """The clip ``loops`` times in a row (ffmpeg -stream_loop, no re-encoding)."""
    import shutil
    import subprocess

    if shutil.which("ffmpeg") is None:
        raise SystemExit("error: --loops needs ffmpeg on PATH")
    out = folder / f"loop{loops}{clip.suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(clip), "-c", "copy",
                    str(out)], check=True)
    return out


def pair_overheads(pairs: list[tuple[dict, dict]], key: str = "steady_cpu_ms_per_frame",
                   higher_is_worse: bool = True) -> dict:
    """Each (plain, ray) pair's ratio minus one, their median, and each side's median figure.
    ``higher_is_worse=False`` for frames a second (plain's over the Ray path's)."""
    ratios, plain, ray = [], [], []
    for p, r in pairs:
        a, b = p.get(key), r.get(key)
        if a and b:
            plain.append(a)
            ray.append(b)
            ratios.append(b / a - 1 if higher_is_worse else a / b - 1)
    if not ratios:
        return {"pairs": 0}
    return {"pairs": len(ratios), "each": [round(x, 3) for x in ratios], "median": round(statistics.median(ratios), 3),
            "plain_median": round(statistics.median(plain), 3), "ray_median": round(statistics.median(ray), 3)}


def _start_cluster(args, nodes: int):
    """A loopback cluster and this process's Ray connection to it (one token for every cluster:
    Ray reads its authentication settings when imported)."""
    import secrets

    from streamcap.cluster.loopback import LoopbackCluster

    token = os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    if not args.loud:
        from streamcap.cluster import quiet

        quiet.apply()
    import ray

    repo = str(Path(__file__).resolve().parents[2])
    # Ray's default health checks (the tests' fast ones cost more), quiet unless --loud.
    cluster = LoopbackCluster(workers=nodes - 1, cpus=8, env={"PYTHONPATH": repo}, token=token,
                              health_check_ms=None, quiet=not args.loud)
    cluster.start()
    try:
        ray.init(address=cluster.address, _node_ip_address=cluster.head_ip, log_to_driver=False,
                 configure_logging=False)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _overhead(args, counts: list[int], clip: Path, loops: int) -> None:
    sat = args.saturate
    results: dict = {"mode": "overhead", "load_before": os.getloadavg(), "cpus": os.cpu_count(),
                     "model_ms": args.model_ms, "saturate": sat, "clip_loops": loops, "repeat": args.repeat,
                     "quiet": not args.loud, "runs": {n: [] for n in counts}}
    cluster = _start_cluster(args, 1)
    import ray  # after _start_cluster: Ray reads the token when imported

    try:
        for r in range(args.repeat):
            for n in counts:
                plain = run_plain(n, args.model_ms, clip, saturate=sat)
                one = run_ray(n, args.model_ms, clip, cluster, one_group=True, saturate=sat)
                results["runs"][n].append({"plain": plain, "ray_one_actor": one})
                pair = pair_overheads([(plain, one)])
                ratio = f"{pair['median']:+.1%}" if pair["pairs"] else "n/a"
                print(f"pair {r + 1}/{args.repeat}, {n} cameras: CPU per frame plain "
                      f"{plain.get('steady_cpu_ms_per_frame')} ms, Ray {one.get('steady_cpu_ms_per_frame')} ms ({ratio}); "
                      f"Ray's daemons {one.get('steady_cpu_ms_per_frame_ray_daemons')} ms; "
                      f"merged-log latency p50 {one.get('latency_p50_ms')} ms", flush=True)
    finally:
        ray.shutdown()
        cluster.stop()
    results["load_after"] = os.getloadavg()
    results["overhead_cpu_per_frame"] = {
        n: pair_overheads([(x["plain"], x["ray_one_actor"]) for x in runs]) for n, runs in results["runs"].items()}
    daemons = {n: [x["ray_one_actor"]["steady_cpu_ms_per_frame_ray_daemons"] for x in runs
                   if x["ray_one_actor"].get("steady_cpu_ms_per_frame_ray_daemons") is not None]
               for n, runs in results["runs"].items()}
    results["ray_daemons_ms_per_frame_median"] = {n: statistics.median(v) if v else None for n, v in daemons.items()}
    if sat:
        results["overhead_throughput"] = {
            n: pair_overheads([(x["plain"], x["ray_one_actor"]) for x in runs], key="steady_fps",
                              higher_is_worse=False) for n, runs in results["runs"].items()}
    for n in counts:
        o = results["overhead_cpu_per_frame"][n]
        if o.get("pairs"):
            print(f"{n} cameras: CPU per frame, median of {o['pairs']}: plain {o['plain_median']} ms, "
                  f"Ray {o['ray_median']} ms; overhead median {o['median']:+.1%} (each: "
                  f"{', '.join(f'{x:+.0%}' for x in o['each'])})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def _main(args, counts: list[int], clip: Path, loops: int) -> None:
    sat = args.saturate
    results: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "model_ms": args.model_ms,
                     "saturate": sat, "clip_loops": loops, "plain": {}, "ray": {}}
    for n in counts:
        results["plain"][n] = run_plain(n, args.model_ms, clip, saturate=sat)
        print(f"plain monitor, {n} cameras: {results['plain'][n]}", flush=True)
    results["quiet"] = not args.loud
    for nodes in (int(x) for x in args.nodes.split(",")):
        t0 = time.monotonic()
        cluster = _start_cluster(args, nodes)
        import ray  # after _start_cluster: Ray reads the token when imported

        try:
            results["ray"][nodes] = {"cluster_start_s": round(time.monotonic() - t0, 1)}
            for n in counts:
                results["ray"][nodes][n] = run_ray(n, args.model_ms, clip, cluster, saturate=sat)
                print(f"ray, {nodes} node(s), {n} cameras, an actor each: {results['ray'][nodes][n]}", flush=True)
            if nodes == 1:  # the overhead of the Ray path itself: all cameras in one actor, as in plain monitor
                results["ray_one_actor"] = {}
                for n in counts:
                    results["ray_one_actor"][n] = run_ray(n, args.model_ms, clip, cluster, one_group=True, saturate=sat)
                    print(f"ray, 1 node, {n} cameras in one actor: {results['ray_one_actor'][n]}", flush=True)
                n = counts[-1]
                results["ray_one_actor_no_linger"] = {n: run_ray(n, args.model_ms, clip, cluster, one_group=True,
                                                                 linger_s=0.0, saturate=sat)}
                print(f"ray, 1 node, {n} cameras in one actor, no linger: {results['ray_one_actor_no_linger'][n]}",
                      flush=True)
        finally:
            ray.shutdown()
            cluster.stop()
    results["load_after"] = os.getloadavg()
    key = "steady_cpu_ms_per_frame"
    for name in ("ray_one_actor", "ray_one_actor_no_linger"):
        if name in results:
            results[f"overhead_{name}_steady_cpu_per_frame"] = {
                n: round(results[name][n][key] / results["plain"][n][key] - 1, 3)
                for n in results[name] if results["plain"][n].get(key) and results[name][n].get(key)}
            if sat:  # time per frame at full speed: plain's frames a second over the Ray path's
                results[f"overhead_{name}_throughput"] = {
                    n: round(results["plain"][n]["steady_fps"] / results[name][n]["steady_fps"] - 1, 3)
                    for n in results[name] if results["plain"][n].get("steady_fps") and results[name][n].get("steady_fps")}
    print(json.dumps(results, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
