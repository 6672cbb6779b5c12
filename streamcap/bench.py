"""``streamcap bench``: the engine's and the segmenter's throughput, measured in one run.

Engine (issue targets): ``streamcap file`` with the no-op stage against raw OpenCV decode and
decode+encode of the same video with the same encoder, and the peak RSS of ``streamcap file``
on the video and on a four-times-longer copy. Segmenter (with ``--seg-weights``): per-stage
time (decode, preprocess, model, mask paste, draw, encode) and end-to-end ``file`` throughput
against model-only throughput on the same frames.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import cv2
import typer
from rich.console import Console
from rich.table import Table

from streamcap.capture import SourceConfig
from streamcap.errors import BadInputError
from streamcap.pipeline import Pipeline, PipelineConfig
from streamcap.sinks import VideoFileSink
from streamcap.stages import NoOpStage

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "vtest.avi"


def _read_frames(video: Path, limit: int | None = None) -> tuple[list, float]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise BadInputError(f"cannot open video: {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while limit is None or len(frames) < limit:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames, fps


def measure_decode(video: Path) -> dict[str, float]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    n, t0 = 0, time.perf_counter()
    while cap.read()[0]:
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 1)}


def measure_decode_encode(video: Path, out: Path, codec: str) -> dict[str, Any]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
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
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 1), "encoder": sink.encoder}


def measure_pipeline(video: Path, out: Path, codec: str, stage=None, renderer=None) -> dict[str, Any]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    sink = VideoFileSink(out, fps, codec=codec)
    pipeline = Pipeline([SourceConfig(str(video))], stage or NoOpStage(), video=sink, renderer=renderer,
                        config=PipelineConfig(stats_interval_s=0))
    t0 = time.perf_counter()
    summary = pipeline.run()
    dt = time.perf_counter() - t0
    return {"frames": summary.written, "seconds": round(dt, 3), "fps": round(summary.written / dt, 1),
            "exit_code": summary.exit_code, "encoder": summary.encoder}


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


def bench_engine(video: Path, workdir: Path, codec: str = "auto", rss: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"video": str(video)}
    result["decode"] = measure_decode(video)
    result["decode_encode"] = measure_decode_encode(video, workdir / "raw.mp4", codec)
    result["file_noop"] = measure_pipeline(video, workdir / "noop.mp4", codec)
    result["file_vs_decode_encode"] = round(result["file_noop"]["fps"] / result["decode_encode"]["fps"], 3)
    result["target_file_vs_decode_encode"] = 0.8
    if rss:
        longer = make_longer(video, 4, workdir / f"x4{video.suffix}")
        r1 = peak_rss_of_file_command(video, workdir / "rss1.mp4")
        r4 = peak_rss_of_file_command(longer, workdir / "rss4.mp4")
        result["peak_rss_kib"] = {"1x": r1, "4x": r4, "ratio_4x_1x": round(r4 / r1, 3)}
    return result


def bench_segment(video: Path, workdir: Path, seg: dict[str, Any], frames: int, codec: str) -> dict[str, Any]:
    from streamcap.render import Renderer
    from streamcap.segment import SegmenterConfig, build_segmenter
    from streamcap.types import Frame, FrameResult

    segmenter = build_segmenter(SegmenterConfig(**seg))
    images, fps = _read_frames(video, frames)
    clip = workdir / "seg_clip.mp4"
    sink = VideoFileSink(clip, fps, codec=codec, crf=18)
    for i, img in enumerate(images):
        sink.write(img, i / fps)
    sink.close()
    decode = measure_decode(clip)
    segmenter([Frame("warmup", 0, 0.0, 0.0, images[0])])  # first call allocates
    segmenter.reset_timings()
    renderer = Renderer(hud=False)
    t0 = time.perf_counter()
    results = [segmenter([Frame("bench", i, i / fps, time.time(), img)])[0] for i, img in enumerate(images)]
    model_only = time.perf_counter() - t0
    timings = copy.deepcopy(segmenter.timings)
    t0 = time.perf_counter()
    drawn = [renderer.annotate(img, FrameResult(Frame("bench", i, 0.0, 0.0, img), det))
             for i, (img, det) in enumerate(zip(images, results))]
    draw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = VideoFileSink(workdir / "enc.mp4", fps, codec=codec)
    for i, img in enumerate(drawn):
        enc.write(img, i / fps)
    enc.close()
    encode_s = time.perf_counter() - t0
    n = len(images)
    e2e = measure_pipeline(clip, workdir / "seg_out.mp4", codec, stage=segmenter, renderer=renderer)
    per_frame_ms = {
        "decode": round(1000 * decode["seconds"] / max(decode["frames"], 1), 2),
        "preprocess": round(1000 * timings["preprocess"] / n, 2),
        "model": round(1000 * timings["model"] / n, 2),
        "mask_paste": round(1000 * timings["paste"] / n, 2),
        "draw": round(1000 * draw_s / n, 2),
        "encode": round(1000 * encode_s / n, 2),
    }
    model_fps = n / model_only
    return {
        "segmenter": segmenter.describe(),
        "random_weights": bool(segmenter.random_weights),
        "frames": n,
        "frame_size": [int(images[0].shape[1]), int(images[0].shape[0])],
        "detections_per_frame": round(timings["counts"]["detections"] / n, 2),
        "per_frame_ms": per_frame_ms,
        "model_only_fps": round(model_fps, 3),
        "file_fps": e2e["fps"],
        "file_vs_model_only": round(e2e["fps"] / model_fps, 3),
        "target_file_vs_model_only": 0.9,
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        video: Annotated[Optional[Path], typer.Option("--video", help="Video to measure (default ../shared/media/vtest.avi).")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary instead of tables.")] = False,
        codec: Annotated[str, typer.Option("--codec", help="Encoder for every measurement: auto | h264 | mp4v.")] = "auto",
        rss: Annotated[bool, typer.Option("--rss/--no-rss", help="Measure peak RSS on the video and a 4x longer copy.")] = True,
        engine: Annotated[bool, typer.Option("--engine/--no-engine", help="Measure the engine with the no-op stage.")] = True,
        seg_weights: Annotated[Optional[str], typer.Option("--seg-weights", help="Also measure Mask R-CNN: a state dict, 'random', or 'default'.")] = None,
        seg_model: Annotated[str, typer.Option("--seg-model", help="v1 | v2.")] = "v1",
        seg_size: Annotated[Optional[int], typer.Option("--seg-size", help="Short side the model sees.")] = None,
        seg_frames: Annotated[int, typer.Option("--seg-frames", min=1, help="Frames for the segmenter measurement.")] = 20,
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:i].")] = "auto",
        batch: Annotated[Optional[int], typer.Option("--batch", help="Frames per model call.")] = None,
    ) -> None:
        """Measure throughput and memory in one run, as ratios against raw OpenCV and the bare model.

        [bold]Examples[/]

          streamcap bench --json

          streamcap bench --no-engine --seg-weights random --seg-size 512 --seg-frames 10
        """
        console = Console(stderr=True)
        video = video or DEFAULT_VIDEO
        if not video.exists():
            console.print(f"streamcap: error: video not found: {video}", style="red", markup=False)
            raise typer.Exit(2)
        report: dict[str, Any] = {"python": sys.version.split()[0], "cpu_count": os.cpu_count()}
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        with tempfile.TemporaryDirectory(prefix="streamcap-bench-") as tmp:
            work = Path(tmp)
            try:
                if engine:
                    with console.status("engine: decode, decode+encode, streamcap file (no-op), RSS"):
                        report["engine"] = bench_engine(video, work, codec, rss)
                if seg_weights is not None:
                    seg = dict(model=seg_model, weights=None if seg_weights == "default" else seg_weights,
                               seg_size=seg_size, device=device, batch=batch)
                    with console.status(f"segmenter: {seg_frames} frames"):
                        report["segment"] = bench_segment(video, work, seg, seg_frames, codec)
            except BadInputError as err:
                console.print(f"streamcap: error: {err}", style="red", markup=False)
                raise typer.Exit(err.exit_code) from None
        if json_out:
            print(json.dumps(report, indent=2))
            return
        _print_tables(report)


def _print_tables(report: dict[str, Any]) -> None:
    console = Console()
    eng = report.get("engine")
    if eng:
        t = Table(title=f"engine on {Path(eng['video']).name}")
        t.add_column("measurement")
        t.add_column("frames", justify="right")
        t.add_column("fps", justify="right")
        for key in ("decode", "decode_encode", "file_noop"):
            t.add_row(key, str(eng[key]["frames"]), f"{eng[key]['fps']:.1f}")
        console.print(t)
        console.print(f"file / decode+encode = {eng['file_vs_decode_encode']:.2f} (target >= 0.80); "
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
        console.print(f"model only {seg['model_only_fps']:.3f} fps; file {seg['file_fps']:.3f} fps; "
                      f"ratio {seg['file_vs_model_only']:.3f} (target >= 0.90)")
