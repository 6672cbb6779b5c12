"""``streamcap bench --live``: ``streamcap live`` on a file played at its own pace, keyframes against
every frame segmented.

The clip is made at run time from the benchmark's input: its frames re-timed to 24 fps and, when
smaller, scaled up to at least 720x528 (no video is stored for this). Two arms run the real ``live``
job (reader paced at 24 fps, newest frame wins, renderer, video and JSONL log) with the same model,
built once and warmed up outside both: ``keyframes`` (``--seg-every auto``, the live default) and
``every_frame`` (``--seg-every 1``). Each reports frames written / frames read, keyframes (model
results) per second of stream, and the latency from a frame's read to the end of its write
(median and p95). Repeats alternate between the arms; each figure is the median with its range.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamcap.capture import SourceConfig
from streamcap.errors import BadInputError
from streamcap.sinks import VideoFileSink

LIVE_FPS = 24.0
MIN_SIZE = (720, 528)
TARGETS = {"written_vs_read": 0.95, "keyframes_per_s": 1 / 1.5, "latency_p95_ms": 150.0}


def make_live_clip(video: Path, out: Path, seconds: float, fps: float = LIVE_FPS,
                   min_size: tuple[int, int] = MIN_SIZE) -> dict[str, Any]:
    """Write ``seconds`` of ``video``'s frames, re-timed to ``fps`` and scaled up (aspect kept)
    to at least ``min_size``, to ``out``."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise BadInputError(f"cannot open video: {video}")
    want = max(1, int(round(seconds * fps)))
    sink = None
    n = 0
    try:
        while n < want:
            ok, img = cap.read()
            if not ok:
                if n == 0:
                    raise BadInputError(f"no frames decoded from {video}")
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # a short input is looped
                continue
            h, w = img.shape[:2]
            scale = max(1.0, min_size[0] / w, min_size[1] / h)
            if scale > 1.0:
                size = (int(np.ceil(w * scale / 2) * 2), int(np.ceil(h * scale / 2) * 2))
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            if sink is None:
                sink = VideoFileSink(out, fps, codec="auto", crf=18)
            sink.write(img, n / fps)
            n += 1
    finally:
        cap.release()
        if sink is not None:
            sink.close()
    return {"frames": n, "fps": fps, "seconds": round(n / fps, 3), "size": [int(img.shape[1]), int(img.shape[0])]}


def live_command(clip: Path, workdir: Path, seg: dict[str, Any], stage: Any, seg_every: int | str,
                 codec: str) -> dict[str, Any]:
    """What ``streamcap live --source CLIP --out OUT --log LOG --no-caption --seg-every E`` does
    (its job, reader, renderer, sinks), in this process, with a model built once."""
    from rich.console import Console

    from streamcap.pipeline import PipelineConfig
    from streamcap.runner import Job, run_job

    out, log = workdir / "live_out.mp4", workdir / "live_out.jsonl"
    queue_size = 1 if seg_every == 1 else 8  # the live command's defaults
    src = SourceConfig(str(clip), kind="file", realtime=True, drop="latest", queue_size=queue_size)
    job = Job(command="live", sources=[src], out=out, overwrite=True, codec=codec, log=log, progress=False,
              segment=seg, caption=None, pipeline=PipelineConfig(seg_every=seg_every),
              argv=["live", "--source", str(clip), "--out", str(out), "--log", str(log), "--no-caption",
                    "--seg-every", str(seg_every)])
    latencies: list[float] = []

    def on_result(result) -> None:  # the writer calls it after the frame is drawn, encoded and logged
        latencies.append((time.monotonic() - result.frame.mono_ts) * 1000.0)

    summary = run_job(job, console=Console(file=io.StringIO()), install_signals=False, stage=stage,
                      on_result=on_result)
    log.unlink(missing_ok=True)
    if summary.exit_code != 0:
        raise RuntimeError(f"streamcap live failed on {clip}: {summary.error}")
    lat = np.array(latencies or [0.0])
    return {
        "frames_read": summary.frames_read, "written": summary.written, "dropped": summary.dropped,
        "written_vs_read": round(summary.written / max(1, summary.frames_read), 3),
        "keyframes": summary.keyframes, "elapsed_s": summary.elapsed_s,
        "latency_ms": {"median": round(float(np.median(lat)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "max": round(float(lat.max()), 1)},
    }


def bench_live(video: Path, workdir: Path, seg: dict[str, Any], seconds: float, codec: str,
               repeats: int, warmup: int, repeat, spread) -> dict[str, Any]:
    """The live arms; ``repeat`` and ``spread`` are bench.py's (alternating repeats, median and range)."""
    from streamcap.segment import SegmenterConfig, build_segmenter
    from streamcap.types import Frame

    clip = workdir / "live_clip.mp4"
    made = make_live_clip(video, clip, seconds)
    segmenter = build_segmenter(SegmenterConfig(**seg))
    cap = cv2.VideoCapture(str(clip))
    ok, first = cap.read()
    cap.release()
    if not ok:
        raise BadInputError(f"no frames decoded from {clip}")
    segmenter([Frame("warmup", 0, 0.0, time.time(), first)])  # the first call allocates
    runs: dict[str, list[dict[str, Any]]] = {"keyframes": [], "every_frame": []}

    def arm(name: str, every: int | str):
        def run(r: int) -> float:
            out = live_command(clip, workdir, seg, segmenter, every, codec)
            out["keyframes_per_s"] = round(out["keyframes"] / made["seconds"], 3)
            if r >= 0:  # warm-up runs (r < 0) are not reported
                runs[name].append(out)
            return out["written_vs_read"]
        return run

    repeat({"keyframes": arm("keyframes", "auto"), "every_frame": arm("every_frame", 1)}, repeats, warmup)
    report: dict[str, Any] = {"clip": made, "segmenter": segmenter.describe(),
                              "random_weights": bool(getattr(segmenter, "random_weights", False)),
                              "targets_keyframes": TARGETS}
    for name, timed in runs.items():
        report[name] = {
            "seg_every": "auto" if name == "keyframes" else 1,
            "frames_read": spread([float(r["frames_read"]) for r in timed], 0),
            "written": spread([float(r["written"]) for r in timed], 0),
            "written_vs_read": spread([r["written_vs_read"] for r in timed]),
            "keyframes_per_s": spread([r["keyframes_per_s"] for r in timed]),
            "latency_median_ms": spread([r["latency_ms"]["median"] for r in timed], 1),
            "latency_p95_ms": spread([r["latency_ms"]["p95"] for r in timed], 1),
        }
    return report
