"""``streamcap bench-web``: what the dashboard costs. The same ``monitor`` run on the same
cameras twice, alone and with ``--serve`` and viewers on every camera; the monitor process's CPU
seconds over the same measured window, and their ratio (target: at most +10%).

Cameras: URLs given, or ``--test-cameras N``: N local RTSP cameras (Debian's rtsp-server-perl
fed by ffmpeg copying a clip in a loop, each on its own loopback address), as the tests use.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.errors import BadInputError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestCamera:
    def __init__(self, clip: Path, mount: str) -> None:
        self.host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.client_port, self.source_port = _free_port(), _free_port()
        self.mount, self.clip = mount, clip
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.client_port}/{self.mount}"

    def start(self) -> "TestCamera":
        self.procs.append(subprocess.Popen(
            ["rtsp-server-perl", "-c", str(self.client_port), "-s", str(self.source_port), "-l", "1",
             "--client_listen_address", self.host, "--source_listen_address", self.host],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.source_port)) == 0:
                    break
            time.sleep(0.1)
        self.procs.append(subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip), "-an", "-c:v", "copy",
             "-f", "rtsp", f"rtsp://{self.host}:{self.source_port}/{self.mount}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True))
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.kill()
            p.wait(timeout=10)


class Viewer(threading.Thread):
    """Reads one MJPEG stream as a browser would, counting the JPEGs."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.stop_event, self.frames = url, stop, 0

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=30) as resp:
                while not self.stop_event.is_set():
                    line = resp.readline()
                    if not line:
                        return
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                        resp.readline()
                        resp.read(n)
                        self.frames += 1
        except OSError:
            return


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _frames(log: Path) -> int:
    try:
        return log.read_bytes().count(b'"event":"frame"')
    except OSError:
        return 0


def measure(urls: list[str], *, serve: bool, viewers: int, warmup: float, duration: float, extra: list[str],
            folder: Path, serve_extra: list[str] = ()) -> dict:
    """One monitor run; CPU seconds and frames over ``duration`` after ``warmup``."""
    log = folder / f"{'serve' if serve else 'alone'}.jsonl"
    log.unlink(missing_ok=True)
    port = _free_port()
    args = [sys.executable, "-m", "streamcap", "monitor", *urls, "--log", str(log), "--no-index", *extra]
    if serve:
        args += ["--serve", f"127.0.0.1:{port}", *serve_extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stop = threading.Event()
    watchers: list[Viewer] = []
    try:
        start = time.monotonic()
        if serve:
            while time.monotonic() - start < warmup:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.5)
            watchers = [Viewer(f"http://127.0.0.1:{port}/video/{i}.mjpg", stop)
                        for _ in range(viewers) for i in range(len(urls))]
            for w in watchers:
                w.start()
        time.sleep(max(0.0, warmup - (time.monotonic() - start)))
        if proc.poll() is not None:
            raise BadInputError(f"monitor ended during the warm-up: {proc.stderr.read()[-500:]}")
        cpu0, frames0, seen0 = _cpu_s(proc.pid), _frames(log), sum(w.frames for w in watchers)
        time.sleep(duration)
        cpu1, frames1, seen1 = _cpu_s(proc.pid), _frames(log), sum(w.frames for w in watchers)
    finally:
        stop.set()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    frames = frames1 - frames0
    cpu = cpu1 - cpu0
    return {"serve": serve, "cpu_s": round(cpu, 2), "frames": frames,
            "cpu_ms_per_frame": round(1000 * cpu / frames, 2) if frames else None,
            "viewer_jpegs": seen1 - seen0, "viewers": len(watchers)}


def bench_web(
    urls: Annotated[Optional[list[str]], typer.Argument(help="Camera URLs (or use --test-cameras).")] = None,
    test_cameras: Annotated[int, typer.Option("--test-cameras", min=0, help="Start this many local RTSP test cameras (rtsp-server-perl + ffmpeg).")] = 0,
    clip: Annotated[Path, typer.Option("--clip", help="What the test cameras show.")] = Path("samples/vtest_8s.mp4"),
    viewers: Annotated[int, typer.Option("--viewers", min=0, help="Viewers watching every camera (0: the dashboard runs, nobody watches).")] = 2,
    duration: Annotated[float, typer.Option("--duration", min=1.0, help="Measured seconds per run.")] = 60.0,
    warmup: Annotated[float, typer.Option("--warmup", min=0.0, help="Seconds before measuring (models load, cameras connect).")] = 25.0,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Pairs of runs (alone, with the dashboard).")] = 1,
    monitor_args: Annotated[str, typer.Option("--monitor-args", help="Options for both monitor runs.")] = "--no-segment --rtsp-transport udp",
    serve_args: Annotated[str, typer.Option("--serve-args", help="Options for the dashboard run only, e.g. '--serve-fps 2'.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The dashboard's cost: monitor alone vs monitor --serve with viewers on every camera.

    [bold]Example[/]

      streamcap bench-web --test-cameras 4 --viewers 2 --duration 60
    """
    cams: list[TestCamera] = []
    urls = list(urls or [])
    if not urls and not test_cameras:
        raise BadInputError("give camera URLs or --test-cameras N")
    try:
        if test_cameras:
            if not clip.is_file():
                raise BadInputError(f"--clip {clip} does not exist")
            cams = [TestCamera(clip, f"cam{i + 1}").start() for i in range(test_cameras)]
            urls += [c.url for c in cams]
        extra = shlex.split(monitor_args)
        runs = []
        with tempfile.TemporaryDirectory(prefix="streamcap-bench-web-") as tmp:
            for _ in range(repeat):
                for serve in (False, True):
                    runs.append(measure(urls, serve=serve, viewers=viewers, warmup=warmup, duration=duration,
                                        extra=extra, folder=Path(tmp), serve_extra=shlex.split(serve_args)))
                    if not as_json:
                        typer.echo(json.dumps(runs[-1]))
    finally:
        for c in cams:
            c.stop()
    alone = [r for r in runs if not r["serve"]]
    served = [r for r in runs if r["serve"]]
    cpu_a, cpu_s = sum(r["cpu_s"] for r in alone), sum(r["cpu_s"] for r in served)
    fr_a, fr_s = sum(r["frames"] for r in alone), sum(r["frames"] for r in served)
    summary = {"cameras": len(urls), "viewers_per_camera": viewers, "duration_s": duration, "repeat": repeat,
               "monitor_args": monitor_args, "serve_args": serve_args, "cpu_s_alone": round(cpu_a, 2), "cpu_s_dashboard": round(cpu_s, 2),
               "cpu_ratio": round(cpu_s / cpu_a, 3) if cpu_a else None,
               "frames_alone": fr_a, "frames_dashboard": fr_s,
               "cpu_per_frame_ratio": round((cpu_s / fr_s) / (cpu_a / fr_a), 3) if fr_a and fr_s and cpu_a else None,
               "viewer_jpegs": sum(r["viewer_jpegs"] for r in served), "runs": runs}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"monitor alone: {cpu_a:.1f} CPU s, {fr_a} frames; with the dashboard and {viewers} viewers "
                   f"per camera: {cpu_s:.1f} CPU s, {fr_s} frames, {summary['viewer_jpegs']} JPEGs to viewers; "
                   f"CPU ratio {summary['cpu_ratio']} (per frame {summary['cpu_per_frame_ratio']}); target <= 1.10")


def register(app: typer.Typer) -> None:
    app.command("bench-web")(bench_web)
