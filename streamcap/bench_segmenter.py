"""``streamcap bench-segmenter``: Mask R-CNN throughput over a matrix of settings, one run.

Frame sizes x inference sizes x precisions x batch sizes x detection caps, on the same decoded
frames (a clip's first frames resized to each frame size), the model built once per row, a
warm-up of two batches, then ``--repeats`` timed passes: median and range of frames per second,
and the per-frame split between preprocessing, the forward pass (its copy to the host
included) and mask pasting. This is the GPU benchmark (fp16, batch 1/4/8, 720p and 1080p) and
the CPU precision comparison (fp32 against bf16) in one command.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from streamcap.errors import BadInputError

NAMED_SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


def parse_size(text: str) -> tuple[str, int, int]:
    """'720p' or 'WxH' -> (name, w, h)."""
    key = text.strip().lower()
    if key in NAMED_SIZES:
        return key, *NAMED_SIZES[key]
    try:
        w, h = (int(v) for v in key.split("x"))
    except ValueError:
        raise BadInputError(f"frame size {text!r}: use 480p, 720p, 1080p, 4k or WxH") from None
    if w < 32 or h < 32:
        raise BadInputError(f"frame size {text!r} is too small (at least 32x32)")
    return key, w, h


def _ints(text: str, what: str, low: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"{what}: comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < low for v in values):
        raise BadInputError(f"{what}: each at least {low}, got {text!r}")
    return values


def measure(frames_by_size: dict[str, list], rows: list[dict[str, Any]], *, device: str, weights: str,
            repeats: int, on_row=None) -> list[dict[str, Any]]:
    """Run every row (size, seg_size, precision, batch, max_det) and return one result per row."""
    import torch

    from streamcap.segment import build_segmenter

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results = []
    for row in rows:
        frames = frames_by_size[row["size"]]
        seg = build_segmenter(weights=weights, device=device, seg_size=row["seg_size"], precision=row["precision"],
                              batch=row["batch"], max_detections=row["max_det"])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seg.segment_images(frames[: row["batch"] * 2])  # warm-up: kernels chosen, memory pools filled
        sync()
        passes = []
        for _ in range(repeats):
            seg.reset_timings()
            t0 = time.perf_counter()
            seg.segment_images(frames)
            sync()
            passes.append(time.perf_counter() - t0)
        tm = seg.timings
        n = tm["counts"]["frames"]
        fps = [len(frames) / s for s in passes]
        result = dict(row, seg_size=row["seg_size"] or "frame", precision=seg.precision,
                      fps=round(statistics.median(fps), 2), fps_min=round(min(fps), 2), fps_max=round(max(fps), 2),
                      ms_preprocess=round(1000 * tm["preprocess"] / n, 2), ms_model=round(1000 * tm["model"] / n, 2),
                      ms_paste=round(1000 * tm["paste"] / n, 2),
                      detections_per_frame=round(tm["counts"]["detections"] / n, 1),
                      peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
        results.append(result)
        if on_row is not None:
            on_row(result)
        del seg
        if cuda:
            torch.cuda.empty_cache()
    return results


def register(app: typer.Typer) -> None:
    @app.command("bench-segmenter")
    def bench_segmenter(
        video: Annotated[Optional[Path], typer.Option("--video", help="Frames come from this clip (default: the bundled samples/vtest_8s.mp4).")] = None,
        sizes: Annotated[str, typer.Option("--sizes", help="Frame sizes, comma-separated: 480p, 720p, 1080p, 4k or WxH.")] = "720p,1080p",
        seg_sizes: Annotated[str, typer.Option("--seg-sizes", help="Inference short sides (0: the frame as it is).")] = "0,800",
        precisions: Annotated[str, typer.Option("--precisions", help="Comma-separated: auto, fp32, bf16, fp16.")] = "auto",
        batches: Annotated[str, typer.Option("--batches", help="Frames per model call.")] = "1,4,8",
        max_dets: Annotated[str, typer.Option("--max-detections", help="Detection caps (random weights find the cap on most frames).")] = "100",
        frames: Annotated[int, typer.Option("--frames", min=1, help="Frames per timed pass.")] = 32,
        repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed passes per row (median and range).")] = 3,
        weights: Annotated[str, typer.Option("--seg-weights", help="'random' (default: no download), 'default' or a state dict.")] = "random",
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:i].")] = "auto",
        json_out: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
    ) -> None:
        """Mask R-CNN throughput over frame sizes, inference sizes, precisions and batch sizes.

        \b
        Examples:
          streamcap bench-segmenter --device cuda --precisions fp16,fp32 --batches 1,4,8
          streamcap bench-segmenter --device cpu --sizes 768x576 --seg-sizes 512 --precisions fp32,bf16 --batches 1 --frames 4
        """
        import cv2
        from rich.console import Console
        from rich.table import Table

        from streamcap.bench import BUNDLED_VIDEO, read_frames, resolve_input
        from streamcap.segment import PRECISIONS

        path = resolve_input(video)[0] if video is not None else BUNDLED_VIDEO
        size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
        precision_list = [p.strip() for p in precisions.split(",") if p.strip()]
        for p in precision_list:
            if p not in PRECISIONS:
                raise BadInputError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        base = read_frames(path, limit=frames)
        if not base:
            raise BadInputError(f"no frames decoded from {path}")
        base = (base * (frames // len(base) + 1))[:frames]
        frames_by_size = {name: [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in base]
                          for name, w, h in size_list}
        rows = [dict(size=name, seg_size=s, precision=p, batch=b, max_det=m)
                for (name, _, _), s, p, b, m in itertools.product(
                    size_list, _ints(seg_sizes, "--seg-sizes", 0), precision_list,
                    _ints(batches, "--batches", 1), _ints(max_dets, "--max-detections", 1))]
        console = Console(stderr=True)
        printer = (lambda r: print(json.dumps(r), flush=True)) if json_out else \
            (lambda r: console.print(f"{r['size']} seg {r['seg_size']} {r['precision']} batch {r['batch']}: "
                                     f"{r['fps']} fps ({r['fps_min']}-{r['fps_max']})", highlight=False))
        results = measure(frames_by_size, rows, device=device, weights=weights, repeats=repeats, on_row=printer)
        if json_out:
            return
        table = Table(title=f"Mask R-CNN on {len(base)} frames of {path.name}, {repeats} passes each")
        for col in ("frame", "seg size", "precision", "batch", "max det", "fps (range)", "pre ms", "model ms",
                    "paste ms", "det/frame", "GPU GiB"):
            table.add_column(col)
        for r in results:
            table.add_row(r["size"], str(r["seg_size"]), r["precision"], str(r["batch"]), str(r["max_det"]),
                          f"{r['fps']} ({r['fps_min']}-{r['fps_max']})", str(r["ms_preprocess"]), str(r["ms_model"]),
                          str(r["ms_paste"]), str(r["detections_per_frame"]), str(r["peak_gpu_gib"] or "-"))
        Console().print(table)
