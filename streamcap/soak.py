"""Soak benchmark: ``monitor``'s engine on looping RTSP cameras for a long time.

Starts its own cameras (rtsp-server-perl on a private loopback address per camera, fed by an
ffmpeg test-pattern publisher), runs the Pipeline in-process with a fast fake model, and every
few seconds records this process's resident memory, threads, open file descriptors and queue
depths to ``soak.csv``. At the end it checks the JSONL log it wrote and gives a verdict in
``soak.json`` (and ``soak.png``, a plot):

- RSS growth after warm-up under 5 % (mean of the last samples vs the first after warm-up);
- no growth of threads or file descriptors after warm-up;
- no lost log lines: every line parses, each camera's frame indexes only increase, the frame
  records add up to the frames written, stats records arrive at the expected cadence.

    streamcap soak --minutes 30 --out soak-30min/          # exit 0: pass, 1: fail
    streamcap soak --minutes 30 --drop-every 60 --out d/   # camera 1 drops every minute
    python -m streamcap.soak --minutes 1 --out /tmp/soak --json
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

RSS_GROWTH_LIMIT_PCT = 5.0


# -- cameras -----------------------------------------------------------------------------------
class LoopbackCamera:
    """rtsp-server-perl + an endless ffmpeg test pattern, on a private 127.x.y.z address.

    (rtsp-server-perl puts its RTP listener at port 20000 whenever it has no mounts, so two
    servers on one address collide; a separate address per camera keeps them apart.)
    """

    def __init__(self, name: str, size: tuple[int, int] = (320, 240), fps: int = 10) -> None:
        for tool in ("rtsp-server-perl", "ffmpeg"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"soak needs {tool} (apt-get install rtsp-server-perl ffmpeg)")
        rng = random.Random()
        self.host = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        self.name, self.size, self.fps = name, size, fps
        self.client_port, self.source_port = self._free_port(), self._free_port()
        self.server: subprocess.Popen | None = None
        self.publisher: subprocess.Popen | None = None

    def _free_port(self) -> int:
        with socket.socket() as s:
            s.bind((self.host if hasattr(self, "host") else "127.0.0.1", 0))
            return s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.client_port}/{self.name}"

    def start(self) -> "LoopbackCamera":
        self.server = subprocess.Popen(
            ["rtsp-server-perl", "-c", str(self.client_port), "-s", str(self.source_port), "-l", "1",
             "--client_listen_address", self.host, "--source_listen_address", self.host],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.source_port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"rtsp-server-perl did not start on {self.host}:{self.source_port}")
        w, h = self.size
        self.publisher = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size={w}x{h}:rate={self.fps}",
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(self.fps), "-bf", "0",
             "-f", "rtsp", f"rtsp://{self.host}:{self.source_port}/{self.name}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def stop(self) -> None:
        for proc in (self.publisher, self.server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.publisher = self.server = None


# -- the fake model ----------------------------------------------------------------------------
class FastFakeStage:
    """A model stand-in: touches every pixel (like a resize would) and takes ``delay_s``."""

    name = "fake-fast"
    batch_size = 1

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.frames = 0

    def __call__(self, frames):
        for f in frames:
            float(np.asarray(f.image[::4, ::4]).mean())
        time.sleep(self.delay_s * len(frames))
        self.frames += len(frames)
        return [None for _ in frames]


# -- sampling ----------------------------------------------------------------------------------
@dataclass
class Sample:
    t_s: float
    rss_mib: float
    threads: int
    fds: int
    queues: dict[str, int]
    result_queue: int
    frames_in: int
    written: int
    dropped: int


@dataclass
class SoakResult:
    verdict: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)


def _sample(process, pipeline, t0: float) -> Sample:
    snap = pipeline.stats.snapshot()
    return Sample(round(time.monotonic() - t0, 2), round(process.memory_info().rss / 2**20, 2),
                  process.num_threads(), process.num_fds(),
                  {r.cfg.name: r.queue.qsize() for r in pipeline.readers}, pipeline.results.qsize(),
                  snap["frames_in"], snap["written"], snap["dropped"])


def run_soak(duration_s: float, out_dir: str | os.PathLike, *, cameras: int = 2, sample_s: float = 2.0,
             stats_interval_s: float = 5.0, warmup_s: float | None = None, fake_delay_s: float = 0.005,
             size: tuple[int, int] = (320, 240), fps: int = 10, drop_every_s: float = 0.0,
             drop_for_s: float = 3.0) -> SoakResult:
    """Run the soak and write soak.csv, soak.jsonl, soak.json and soak.png into ``out_dir``.

    ``drop_every_s`` > 0 kills the first camera's server that often and restarts it after
    ``drop_for_s`` (a camera that drops), so memory and descriptors are measured across
    many reconnects too."""
    import psutil

    from streamcap.capture import SourceConfig
    from streamcap.pipeline import Pipeline, PipelineConfig
    from streamcap.sinks import JsonlSink

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "soak.jsonl"
    if log_path.exists():
        log_path.unlink()
    warmup = warmup_s if warmup_s is not None else min(120.0, 0.25 * duration_s)
    cams = [LoopbackCamera(f"cam{i + 1}", size, fps) for i in range(cameras)]
    samples: list[Sample] = []
    process = psutil.Process()
    try:
        for cam in cams:
            cam.start()
        sources = [SourceConfig(c.url, kind="stream", rtsp_transport="udp", queue_size=1, open_timeout_s=5,
                                read_timeout_s=5, watchdog_s=10, backoff_max_s=5) for c in cams]
        sink = JsonlSink(log_path).open()
        stage = FastFakeStage(fake_delay_s)
        pipeline = Pipeline(sources, stage, config=PipelineConfig(stats_interval_s=stats_interval_s),
                            log_sink=sink)
        t0 = time.monotonic()
        next_sample = [t0]
        drops = [0]
        halt = threading.Event()

        def chaos() -> None:
            while not halt.wait(drop_every_s):
                if time.monotonic() - t0 > duration_s - drop_every_s / 2:
                    return
                cams[0].stop()
                drops[0] += 1
                if halt.wait(drop_for_s):
                    return
                cams[0].start()

        chaos_thread = threading.Thread(target=chaos, name="soak-chaos", daemon=True)
        if drop_every_s > 0:
            chaos_thread.start()

        def on_tick(p) -> None:
            now = time.monotonic()
            if now >= next_sample[0]:
                next_sample[0] += sample_s
                samples.append(_sample(process, p, t0))
            if now - t0 >= duration_s:
                p.request_stop("duration")

        old = signal.getsignal(signal.SIGINT)
        try:
            summary = pipeline.run(on_tick=on_tick)
        finally:
            halt.set()
            if chaos_thread.is_alive():
                chaos_thread.join(timeout=15)
            sink.close()
            signal.signal(signal.SIGINT, old)
    finally:
        for cam in cams:
            cam.stop()
    verdict = _verdict(samples, log_path, summary, duration_s, warmup, stats_interval_s,
                       [r.cfg.name for r in pipeline.readers], drops[0])
    _write_csv(out / "soak.csv", samples)
    try:
        _plot(out / "soak.png", samples, warmup)
        verdict["plot"] = str(out / "soak.png")
    except ImportError:  # matplotlib is optional (pip install streamcap[plot])
        verdict["plot"] = None
    (out / "soak.json").write_text(json.dumps(verdict, indent=2) + "\n")
    return SoakResult(verdict, samples)


def _verdict(samples: list[Sample], log_path: Path, summary, duration_s: float, warmup_s: float,
             stats_interval_s: float, names: list[str], drops: int = 0) -> dict[str, Any]:
    after = [s for s in samples if s.t_s >= warmup_s]
    # Windows at the start and the end of the measured part; medians, so that a sample taken
    # during a reconnect (a socket more or less) does not decide the verdict.
    k = max(1, min(30, len(after) // 10))
    head, tail = after[:k], after[-k:]
    rss0 = statistics.mean(s.rss_mib for s in head) if head else float("nan")
    rss1 = statistics.mean(s.rss_mib for s in tail) if tail else float("nan")
    growth = (rss1 - rss0) / rss0 * 100.0 if head else float("nan")
    med = statistics.median_low
    thr0, thr1 = (med([s.threads for s in head]), med([s.threads for s in tail])) if after else (0, 0)
    fd0, fd1 = (med([s.fds for s in head]), med([s.fds for s in tail])) if after else (0, 0)
    # -- the log
    bad_lines, records = 0, []
    data = log_path.read_bytes()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad_lines += 1
    frames = [r for r in records if r.get("event") == "frame"]
    per_source = {n: [r["frame_index"] for r in frames if r["source"] == n] for n in names}
    index_errors = sum(sum(1 for a, b in zip(ix, ix[1:]) if b <= a) for ix in per_source.values())
    end = records[-1] if records and records[-1].get("event") == "end" else {}
    # Frames missing from a camera's sequence must all be counted drops (latest-frame policy).
    unaccounted = sum(max(0, (max(ix) + 1 - len(ix)) - end.get("sources", {}).get(n, {}).get("dropped", 0))
                      for n, ix in per_source.items() if ix)
    stats_times = [datetime.fromisoformat(r["time"]).timestamp() for r in records if r.get("event") == "stats"]
    gaps = [b - a for a, b in zip(stats_times, stats_times[1:])]
    expected_stats = int(duration_s // stats_interval_s) if stats_interval_s > 0 else 0
    statuses = [r.get("status") for r in records if r.get("event") == "source_status"]
    checks = {
        "samples_after_warmup": len(after) >= 3,
        "rss_growth_under_5pct": growth < RSS_GROWTH_LIMIT_PCT,
        "threads_no_growth": thr1 <= thr0,
        "fds_no_growth": fd1 <= fd0,
        "log_complete_lines": bad_lines == 0 and data.endswith(b"\n"),
        "log_ends_with_end_record": bool(end),
        "frame_indexes_increase": index_errors == 0,
        "frame_records_equal_written": bool(end) and len(frames) == end.get("written"),
        "missing_frames_all_counted_as_dropped": unaccounted == 0,
        "every_camera_produced": all(len(ix) > 0 for ix in per_source.values()),
        "stats_cadence": (expected_stats == 0 or (len(stats_times) >= expected_stats - 1
                          and (not gaps or max(gaps) <= 2 * stats_interval_s))),
        "run_ended_normally": summary.exit_code == 0,
        "recovered_from_every_drop": statuses.count("reconnected") >= drops - 1,
    }
    return {
        "pass": all(checks.values()),
        "checks": checks,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "samples": len(samples),
        "rss_mib_after_warmup": round(rss0, 2),
        "rss_mib_end": round(rss1, 2),
        "rss_growth_pct": round(growth, 3),
        "rss_mib_max": max((s.rss_mib for s in samples), default=None),
        "threads_after_warmup": thr0, "threads_end": thr1, "threads_max": max((s.threads for s in after), default=None),
        "fds_after_warmup": fd0, "fds_end": fd1, "fds_max": max((s.fds for s in after), default=None),
        "max_queue_depth": max((max(s.queues.values(), default=0) for s in samples), default=0),
        "max_result_queue": max((s.result_queue for s in samples), default=0),
        "frames_written": end.get("written"),
        "frames_per_camera": {n: len(ix) for n, ix in per_source.items()},
        "dropped": end.get("dropped"),
        "log_lines": len(records) + bad_lines,
        "bad_log_lines": bad_lines,
        "frame_index_errors": index_errors,
        "unaccounted_missing_frames": unaccounted,
        "stats_records": len(stats_times),
        "stats_expected": expected_stats,
        "max_stats_gap_s": round(max(gaps), 2) if gaps else None,
        "camera_drops": drops,
        "lost_events": statuses.count("lost"),
        "reconnects": statuses.count("reconnected"),
        "exit_code": summary.exit_code,
    }


def _write_csv(path: Path, samples: list[Sample]) -> None:
    names = sorted({n for s in samples for n in s.queues})
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "rss_mib", "threads", "fds", *[f"queue_{n}" for n in names], "result_queue",
                    "frames_in", "written", "dropped"])
        for s in samples:
            w.writerow([s.t_s, s.rss_mib, s.threads, s.fds, *[s.queues.get(n, 0) for n in names], s.result_queue,
                        s.frames_in, s.written, s.dropped])


def _plot(path: Path, samples: list[Sample], warmup_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s / 60.0 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 9), sharex=True)
    axes[0].plot(t, [s.rss_mib for s in samples])
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].plot(t, [s.threads for s in samples], label="threads")
    axes[1].plot(t, [s.fds for s in samples], label="open fds")
    axes[1].legend(loc="upper left")
    axes[1].set_ylabel("count")
    for name in sorted({n for s in samples for n in s.queues}):
        axes[2].step(t, [s.queues.get(name, 0) for s in samples], where="post", label=name)
    axes[2].step(t, [s.result_queue for s in samples], where="post", label="results")
    axes[2].legend(loc="upper left", fontsize="small")
    axes[2].set_ylabel("queue depth")
    axes[3].plot(t, [s.written for s in samples], label="written")
    axes[3].plot(t, [s.dropped for s in samples], label="dropped")
    axes[3].legend(loc="upper left")
    axes[3].set_ylabel("frames")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.axvline(warmup_s / 60.0, color="grey", linestyle=":", linewidth=1)
    fig.suptitle("streamcap soak (dotted: end of warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    @app.command()
    def soak(
        minutes: Annotated[float, typer.Option("--minutes", help="How long to run.")] = 30.0,
        out: Annotated[Path, typer.Option("--out", help="Folder for soak.csv, soak.png, soak.json, soak.jsonl.")] = Path("soak"),
        json_out: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
        cameras: Annotated[int, typer.Option("--cameras", min=1, help="Looping RTSP cameras to start.")] = 2,
        sample_s: Annotated[float, typer.Option("--sample-every", help="Seconds between samples.")] = 2.0,
        stats_interval: Annotated[float, typer.Option("--stats-interval", help="Seconds between stats records.")] = 5.0,
        warmup: Annotated[Optional[float], typer.Option("--warmup", help="Warm-up seconds (default: 25%, at most 120).")] = None,
        drop_every: Annotated[float, typer.Option("--drop-every", help="Kill camera 1's server every N seconds, restart it 3 s later (0: never).")] = 0.0,
    ) -> None:
        """Run monitor's engine on looping RTSP cameras and check memory, threads, fds and the log.

        [bold]Example[/]

          streamcap soak --minutes 30 --out soak-30min/

        Exit 0 when every check passes, 1 when one fails (see soak.json).
        """
        import logging

        from rich.console import Console

        console = Console(stderr=True)
        # Source events go to soak.jsonl; keep stderr for the verdict.
        if not logging.getLogger("streamcap").handlers:
            logging.getLogger("streamcap").addHandler(logging.NullHandler())
        if not json_out:
            console.print(f"soak: {minutes:g} min, {cameras} cameras, results in {out}/", highlight=False)
        result = run_soak(minutes * 60.0, out, cameras=cameras, sample_s=sample_s, stats_interval_s=stats_interval,
                          warmup_s=warmup, drop_every_s=drop_every)
        v = result.verdict
        if json_out:
            print(json.dumps(v))
        else:
            console.print(f"soak: {'PASS' if v['pass'] else 'FAIL'}  RSS {v['rss_mib_after_warmup']} -> "
                          f"{v['rss_mib_end']} MiB ({v['rss_growth_pct']:+.2f}%), threads {v['threads_after_warmup']}"
                          f" -> {v['threads_end']}, fds {v['fds_after_warmup']} -> {v['fds_end']}, "
                          f"{v['frames_written']} frames, {v['stats_records']} stats records", highlight=False)
            for name, ok in v["checks"].items():
                if not ok:
                    console.print(f"soak: failed check: {name}", style="red", highlight=False)
        if not v["pass"]:
            raise typer.Exit(1)


def main() -> None:
    # As the streamcap command does: OpenCV's and FFmpeg's own chatter off stderr.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    app = typer.Typer(add_completion=False)
    register(app)

    @app.callback()
    def _root() -> None:
        """streamcap soak (standalone)."""

    app(prog_name="streamcap")


if __name__ == "__main__":
    main()
