"""``streamcap bench``: the engine's and the segmenter's throughput, as ratios of equal work.

Every ratio compares two arms that do the same work on the same frames of the same input,
measured after a warm-up run, over ``--repeats`` runs that alternate between the arms (so load
from other processes falls on both alike); each figure is the median with the min-max range.

Engine: raw OpenCV decode + encode (the encoder ``streamcap file`` uses) against the real
``streamcap file IN --out OUT --log LOG --no-segment --no-caption`` (its job, renderer and JSONL
log, run in this process); peak RSS of that command as a child process, on the input and a
four-times-longer copy. Segmenter (with ``--seg-weights``): the model alone on the first
``--seg-frames`` frames, called with the batch size the pipeline uses, against the real
``streamcap file CLIP --out OUT --log LOG --no-caption`` on a clip of exactly those frames
(model built once, outside both arms); per-stage time per frame.

Input: ``--video``, else ``../shared/media/vtest.avi`` next to the repository, else the bundled
``samples/vtest_8s.mp4``; the report names which one was used.
"""

from __future__ import annotations

import copy
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import cv2
import typer
from rich.console import Console
from rich.table import Table

from streamcap.capture import SourceConfig
from streamcap.errors import BadInputError
from streamcap.sinks import VideoFileSink

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEO = REPO.parent / "shared" / "media" / "vtest.avi"
BUNDLED_VIDEO = REPO / "samples" / "vtest_8s.mp4"


def resolve_input(video: Path | None, shared: Path | None = None,
                  bundled: Path | None = None) -> tuple[Path, str]:
    """(path, origin): the given video ("given"), else the shared clip, else the bundled one."""
    shared = SHARED_VIDEO if shared is None else shared
    bundled = BUNDLED_VIDEO if bundled is None else bundled
    if video is not None:
        if not video.is_file():
            raise BadInputError(f"video not found: {video}")
        return video, "given"
    if shared.is_file():
        return shared, "shared"
    if bundled.is_file():
        return bundled, "bundled"
    raise BadInputError(f"no video to measure: neither {shared} nor the bundled {bundled} exists; pass --video")


def spread(values: list[float], ndigits: int = 3) -> dict[str, Any]:
    """Median and range of repeated measurements."""
    return {"median": round(statistics.median(values), ndigits), "min": round(min(values), ndigits),
            "max": round(max(values), ndigits), "runs": [round(v, ndigits) for v in values]}


def repeat(arms: dict[str, Callable[[int], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Run each arm ``warmup`` times untimed, then ``repeats`` rounds in which every arm runs
    once, in turn; each call gets its run number and returns frames per second."""
    for i in range(warmup):
        for arm in arms.values():
            arm(-1 - i)
    out: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(repeats):
        for name, arm in arms.items():
            out[name].append(arm(r))
    return out


def video_info(video: Path) -> dict[str, Any]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise BadInputError(f"cannot open video: {video}")
    info = {"fps": cap.get(cv2.CAP_PROP_FPS) or 25.0,
            "size": [int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))]}
    cap.release()
    return info


def read_frames(video: Path, limit: int | None = None) -> list:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    frames = []
    while limit is None or len(frames) < limit:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def decode_fps(video: Path) -> tuple[int, float]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    n, t0 = 0, time.perf_counter()
    while cap.read()[0]:
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return n, n / dt


def decode_encode_fps(video: Path, out: Path, codec: str, fps: float) -> tuple[int, float, str]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    sink = VideoFileSink(out, fps, codec=codec)
    n, t0 = 0, time.perf_counter()
    while True:
        ok, img = cap.read()
        if not ok:
            break
        sink.write(img, n / fps)
        n += 1
    sink.close()
    dt = time.perf_counter() - t0
    cap.release()
    return n, n / dt, str(sink.encoder)


def file_command(video: Path, out: Path, log: Path, codec: str, segment: dict | None = None,
                 stage: Any = None):
    """What ``streamcap file VIDEO --out OUT --log LOG --no-caption [--no-segment]`` does (its
    job, renderer, log sink and pipeline), in this process; returns the run summary."""
    from streamcap.runner import Job, run_job

    job = Job(command="file", sources=[SourceConfig(str(video), kind="file")], out=out, overwrite=True,
              codec=codec, log=log, progress=False, segment=segment, caption=None,
              argv=["file", str(video), "--out", str(out), "--log", str(log)])
    summary = run_job(job, console=Console(file=io.StringIO()), install_signals=False, stage=stage)
    if summary.exit_code != 0:
        raise RuntimeError(f"streamcap file failed on {video}: {summary.error}")
    return summary


def peak_rss_of_file_command(video: Path, out: Path) -> int:
    """Peak RSS (KiB) of a ``streamcap file --no-segment --no-caption`` child process.

    Read from the child's own high-water mark (VmHWM in /proc), polled until it exits: the
    rusage of a child counts the pages it had from this (large) process before exec.
    """
    proc = subprocess.Popen([sys.executable, "-m", "streamcap", "file", str(video), "--out", str(out),
                             "--overwrite", "--no-segment", "--no-caption"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"streamcap file exited {proc.returncode} on {video}")
    return peak


def make_longer(video: Path, times: int, out: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(times - 1), "-i", str(video), "-an",
                    "-c", "copy", str(out)], check=True)
    return out


def bench_engine(video: Path, workdir: Path, codec: str = "auto", rss: bool = True,
                 repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    fps_in = video_info(video)["fps"]
    seen: dict[str, Any] = {}

    def decode(_r: int) -> float:
        seen["decode_frames"], fps = decode_fps(video)
        return fps

    def decode_encode(_r: int) -> float:
        seen["raw_frames"], fps, seen["raw_encoder"] = decode_encode_fps(video, workdir / "raw.mp4", codec, fps_in)
        return fps

    def file(_r: int) -> float:
        t0 = time.perf_counter()
        s = file_command(video, workdir / "file.mp4", workdir / "file.jsonl", codec)
        dt = time.perf_counter() - t0
        (workdir / "file.jsonl").unlink()
        seen["file_frames"], seen["file_encoder"] = s.written, s.encoder
        return s.written / dt

    runs = repeat({"decode": decode, "decode_encode": decode_encode, "file": file}, repeats, warmup)
    result: dict[str, Any] = {
        "decode": {"frames": seen["decode_frames"], "fps": spread(runs["decode"], 1)},
        "decode_encode": {"frames": seen["raw_frames"], "fps": spread(runs["decode_encode"], 1),
                          "encoder": seen["raw_encoder"]},
        "file": {"frames": seen["file_frames"], "fps": spread(runs["file"], 1), "encoder": seen["file_encoder"],
                 "command": "streamcap file INPUT --out OUT.mp4 --log LOG.jsonl --no-segment --no-caption"},
        "file_vs_decode_encode": spread([f / d for f, d in zip(runs["file"], runs["decode_encode"])]),
        "target_file_vs_decode_encode": 0.8,
    }
    if rss:
        longer = make_longer(video, 4, workdir / f"x4{video.suffix}")
        r1 = peak_rss_of_file_command(video, workdir / "rss1.mp4")
        r4 = peak_rss_of_file_command(longer, workdir / "rss4.mp4")
        result["peak_rss_kib"] = {"1x": r1, "4x": r4, "ratio_4x_1x": round(r4 / r1, 3)}
    return result


def bench_segment(video: Path, workdir: Path, seg: dict[str, Any], frames: int, codec: str,
                  repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    from streamcap.render import Renderer
    from streamcap.segment import SegmenterConfig, build_segmenter
    from streamcap.types import Frame, FrameResult

    segmenter = build_segmenter(SegmenterConfig(**seg))
    fps_in = video_info(video)["fps"]
    clip = workdir / "seg_clip.mp4"  # both arms read exactly these frames
    sink = VideoFileSink(clip, fps_in, codec=codec, crf=18)
    for i, img in enumerate(read_frames(video, frames)):
        sink.write(img, i / fps_in)
    sink.close()
    images = read_frames(clip)
    if not images:
        raise BadInputError(f"no frames decoded from {video}")
    n, batch = len(images), max(1, int(segmenter.batch_size))
    results: list = []

    def model_only(r: int) -> float:
        if r == 0:
            segmenter.reset_timings()  # per-stage figures over the timed runs only
        t0 = time.perf_counter()
        out = []
        for s in range(0, n, batch):  # the pipeline's batch size
            out.extend(segmenter([Frame("bench", i, i / fps_in, time.time(), images[i])
                                  for i in range(s, min(n, s + batch))]))
        dt = time.perf_counter() - t0
        results[:] = out
        return n / dt

    def file(_r: int) -> float:
        saved = copy.deepcopy(segmenter.timings)  # keep the model-only per-stage figures apart
        try:
            t0 = time.perf_counter()
            s = file_command(clip, workdir / "seg_out.mp4", workdir / "seg_out.jsonl", codec, segment=seg,
                             stage=segmenter)
            dt = time.perf_counter() - t0
        finally:
            segmenter.timings = saved
        (workdir / "seg_out.jsonl").unlink()
        return s.written / dt

    runs = repeat({"model_only": model_only, "file": file}, repeats, warmup)
    timings = segmenter.timings
    counted = max(1, timings["counts"]["frames"])
    renderer = Renderer(hud=False, banner=False)
    t0 = time.perf_counter()
    drawn = [renderer.annotate(img, FrameResult(Frame("bench", i, 0.0, 0.0, img), det))
             for i, (img, det) in enumerate(zip(images, results))]
    draw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = VideoFileSink(workdir / "enc.mp4", fps_in, codec=codec)
    for i, img in enumerate(drawn):
        enc.write(img, i / fps_in)
    enc.close()
    encode_s = time.perf_counter() - t0
    _, dec_fps = decode_fps(clip)
    per_frame_ms = {
        "decode": round(1000 / dec_fps, 2),
        "preprocess": round(1000 * timings["preprocess"] / counted, 2),
        "model": round(1000 * timings["model"] / counted, 2),
        "mask_paste": round(1000 * timings["paste"] / counted, 2),
        "draw": round(1000 * draw_s / n, 2),
        "encode": round(1000 * encode_s / n, 2),
    }
    return {
        "segmenter": segmenter.describe(),
        "random_weights": bool(segmenter.random_weights),
        "frames": n,
        "batch": batch,
        "frame_size": [int(images[0].shape[1]), int(images[0].shape[0])],
        "detections_per_frame": round(timings["counts"]["detections"] / counted, 2),
        "per_frame_ms": per_frame_ms,
        "model_only_fps": spread(runs["model_only"]),
        "file_fps": spread(runs["file"]),
        "file_command": "streamcap file CLIP --out OUT.mp4 --log LOG.jsonl --no-caption (segmenter options as given)",
        "file_vs_model_only": spread([f / m for f, m in zip(runs["file"], runs["model_only"])]),
        "target_file_vs_model_only": 0.9,
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        video: Annotated[Optional[Path], typer.Option("--video", help="Video to measure (default ../shared/media/vtest.avi, else the bundled samples/vtest_8s.mp4).")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary instead of tables.")] = False,
        codec: Annotated[str, typer.Option("--codec", help="Encoder for every measurement: auto | h264 | mp4v.")] = "auto",
        rss: Annotated[bool, typer.Option("--rss/--no-rss", help="Measure peak RSS on the video and a 4x longer copy.")] = True,
        engine: Annotated[bool, typer.Option("--engine/--no-engine", help="Measure the engine with the no-op stage.")] = True,
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs of each arm (median and range reported).")] = 3,
        warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs of each arm first.")] = 1,
        seg_weights: Annotated[Optional[str], typer.Option("--seg-weights", help="Also measure Mask R-CNN: a state dict, 'random', or 'default'.")] = None,
        seg_model: Annotated[str, typer.Option("--seg-model", help="v1 | v2.")] = "v1",
        seg_size: Annotated[Optional[int], typer.Option("--seg-size", help="Short side the model sees.")] = None,
        seg_frames: Annotated[int, typer.Option("--seg-frames", min=1, help="Frames for the segmenter measurement.")] = 20,
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:i].")] = "auto",
        batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Frames per model call.")] = None,
        live: Annotated[bool, typer.Option("--live", help="Also measure `streamcap live` on a 24 fps clip (720x528 or larger, made from the input) played at its own pace: keyframes (--seg-every auto) beside every frame segmented (Mask R-CNN with --seg-weights, default random).")] = False,
        live_seconds: Annotated[float, typer.Option("--live-seconds", min=0.5, help="Length of the live clip.")] = 10.0,
        max_detections: Annotated[int, typer.Option("--max-detections", min=1, help="At most this many objects per frame (random weights give this many, all meaningless).")] = 100,
    ) -> None:
        """Measure throughput and memory as ratios of equal work: raw OpenCV against `streamcap
        file`, the bare model against `streamcap file` with the model; warm-up, repeats, spread.

        [bold]Examples[/]

          streamcap bench --json

          streamcap bench --no-engine --seg-weights random --seg-size 512 --seg-frames 10

          streamcap bench --no-engine --live --seg-weights random --seg-size 512
        """
        console = Console(stderr=True)
        try:
            path, origin = resolve_input(video)
            info = video_info(path)
        except BadInputError as err:
            console.print(f"streamcap: error: {err}", style="red", markup=False)
            raise typer.Exit(err.exit_code) from None
        if origin == "bundled":
            console.print(f"streamcap: {SHARED_VIDEO} not found; measuring the bundled {path.name}",
                          markup=False, highlight=False)
        import torch

        report: dict[str, Any] = {
            "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "input": {"path": str(path), "origin": origin, "size": info["size"], "fps": round(info["fps"], 3)},
            "repeats": repeats, "warmup": warmup, "load_average_start": _load(),
        }
        with tempfile.TemporaryDirectory(prefix="streamcap-bench-") as tmp:
            work = Path(tmp)
            try:
                if engine:
                    with console.status("engine: decode, decode+encode, streamcap file (no-op), RSS"):
                        report["engine"] = bench_engine(path, work, codec, rss, repeats, warmup)
                if seg_weights is not None:
                    seg = dict(model=seg_model, weights=None if seg_weights == "default" else seg_weights,
                               seg_size=seg_size, device=device, batch=batch, max_detections=max_detections)
                    with console.status(f"segmenter: {seg_frames} frames"):
                        report["segment"] = bench_segment(path, work, seg, seg_frames, codec, repeats, warmup)
                if live:
                    from streamcap.bench_live import bench_live

                    seg = dict(model=seg_model, weights="random" if seg_weights is None else (
                        None if seg_weights == "default" else seg_weights), seg_size=seg_size, device=device,
                        batch=batch, max_detections=max_detections)
                    with console.status(f"live: {live_seconds:g} s clip, keyframes and every frame"):
                        report["live"] = bench_live(path, work, seg, live_seconds, codec, repeats, warmup,
                                                    repeat, spread)
            except BadInputError as err:
                console.print(f"streamcap: error: {err}", style="red", markup=False)
                raise typer.Exit(err.exit_code) from None
        report["load_average_end"] = _load()
        if json_out:
            print(json.dumps(report, indent=2))
            return
        _print_tables(report)


def _fmt(s: dict[str, Any], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _print_tables(report: dict[str, Any]) -> None:
    console = Console()
    inp = report["input"]
    console.print(f"input: {inp['path']} ({inp['origin']}), {inp['size'][0]}x{inp['size'][1]}; "
                  f"median (min-max) of {report['repeats']} runs after {report['warmup']} warm-up; "
                  f"load average {report['load_average_start']} -> {report['load_average_end']}",
                  markup=False, highlight=False)
    eng = report.get("engine")
    if eng:
        t = Table(title=f"engine on {Path(inp['path']).name}")
        t.add_column("measurement")
        t.add_column("frames", justify="right")
        t.add_column("fps", justify="right")
        for key in ("decode", "decode_encode", "file"):
            t.add_row(key, str(eng[key]["frames"]), _fmt(eng[key]["fps"]))
        console.print(t)
        console.print(f"file / decode+encode = {_fmt(eng['file_vs_decode_encode'], 2)} (target >= 0.80); "
                      f"encoder: {eng['decode_encode']['encoder']}")
        if "peak_rss_kib" in eng:
            r = eng["peak_rss_kib"]
            console.print(f"peak RSS: {r['1x'] / 1024:.0f} MiB (1x), {r['4x'] / 1024:.0f} MiB (4x), ratio {r['ratio_4x_1x']:.3f}")
    seg = report.get("segment")
    if seg:
        t = Table(title=seg["segmenter"])
        t.add_column("stage")
        t.add_column("ms / frame", justify="right")
        for key, value in seg["per_frame_ms"].items():
            t.add_row(key, f"{value:.1f}")
        console.print(t)
        console.print(f"model only {_fmt(seg['model_only_fps'], 3)} fps; file {_fmt(seg['file_fps'], 3)} fps; "
                      f"ratio {_fmt(seg['file_vs_model_only'], 3)} (target >= 0.90)")
    live = report.get("live")
    if live:
        clip = live["clip"]
        t = Table(title=f"live, {clip['size'][0]}x{clip['size'][1]} at {clip['fps']:g} fps, {clip['seconds']:g} s; "
                        f"{live['segmenter']}")
        t.add_column("seg-every")
        for key in ("written / read", "keyframes / s", "latency median ms", "latency p95 ms"):
            t.add_column(key, justify="right")
        for name in ("keyframes", "every_frame"):
            a = live[name]
            t.add_row(str(a["seg_every"]), _fmt(a["written_vs_read"], 3), _fmt(a["keyframes_per_s"], 2),
                      _fmt(a["latency_median_ms"]), _fmt(a["latency_p95_ms"]))
        console.print(t)
        console.print("targets with keyframes: written / read >= 0.95, keyframes / s >= 0.67, p95 latency <= 150 ms")
