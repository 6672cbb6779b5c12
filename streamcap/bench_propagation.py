"""``streamcap bench-propagation``: how well masks carried between keyframes match hand-drawn ones.

ROOT holds ``SEQ/frames/*.jpg`` and ``SEQ/masks/*.png`` (one mask per frame, same stem: the layout of
DAVIS and of ``../shared/davis``). The mask of frames 0, K, 2K, ... is given to
:class:`streamcap.carry.Carrier` (the code the live path uses) as a keyframe; the frames in between
are carried, written to ``OUT/SEQ/STEM.png`` (0/255, the frame's size) for the first method, and
scored: region similarity J (mean IoU over the carried frames) per method and for "hold" (the
keyframe mask copied), and the time per carried frame on one OpenCV thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from streamcap.carry import METHODS, PRESETS, Carrier, CarryConfig
from streamcap.errors import BadInputError
from streamcap.sinks import ensure_writable_dir

DEFAULT_METHODS = ("carry",)


def parse_method(spec: str) -> CarryConfig:
    """``NAME[:PRESET][@SCALE]``, e.g. ``carry``, ``warp:medium@0.5``, ``warp:fast@1`` -> a config."""
    name, _, scale = spec.partition("@")
    name, _, preset = name.partition(":")
    kw: dict = {"method": name}
    if name not in METHODS:
        raise BadInputError(f"unknown method {spec!r}: use carry, hold or warp[:PRESET][@SCALE]")
    if preset:
        if preset not in PRESETS:
            raise BadInputError(f"unknown DIS preset in {spec!r}: one of {', '.join(PRESETS)}")
        kw["preset"] = preset
    elif name == "warp":
        kw["preset"] = "medium"
    if scale:
        try:
            kw["scale"] = float(scale)
            return CarryConfig(**kw)
        except ValueError:
            raise BadInputError(f"bad scale in {spec!r}: a number in [0.05, 1]") from None
    return CarryConfig(**kw)


def find_sequences(root: Path, names: Optional[list[str]] = None) -> list[Path]:
    if not root.is_dir():
        raise BadInputError(f"not a folder: {root}")
    seqs = sorted(p for p in root.iterdir() if (p / "frames").is_dir() and (p / "masks").is_dir())
    if names:
        known = {p.name: p for p in seqs}
        missing = [n for n in names if n not in known]
        if missing:
            raise BadInputError(f"no sequence {missing[0]!r} under {root} (SEQ/frames and SEQ/masks)")
        seqs = [known[n] for n in names]
    if not seqs:
        raise BadInputError(f"no sequences under {root}: expected SEQ/frames/*.jpg and SEQ/masks/*.png")
    return seqs


def load_sequence(seq: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Frame stems, BGR frames and bool masks of one sequence; BadInputError on anything missing."""
    frames = sorted(p for p in (seq / "frames").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(frames) < 2:
        raise BadInputError(f"{seq.name}: fewer than 2 frames in {seq / 'frames'}")
    stems, images, masks = [], [], []
    for f in frames:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            raise BadInputError(f"{seq.name}: cannot read frame {f}")
        mpath = seq / "masks" / (f.stem + ".png")
        m = cv2.imread(str(mpath), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise BadInputError(f"{seq.name}: no readable mask {mpath} for frame {f.name}")
        if m.shape != img.shape[:2]:
            raise BadInputError(f"{seq.name}: mask {mpath.name} is {m.shape[1]}x{m.shape[0]}, "
                                f"frame is {img.shape[1]}x{img.shape[0]}")
        stems.append(f.stem)
        images.append(img)
        masks.append(m > 127)
    return stems, images, masks


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def carry_sequence(images: list[np.ndarray], masks: list[np.ndarray], every: int,
                   config: CarryConfig) -> tuple[dict[int, np.ndarray], dict[str, float]]:
    """Carried mask per non-key frame index, and timing (wall and CPU ms per carried frame)."""
    carrier = Carrier(config)
    h, w = masks[0].shape
    out: dict[int, np.ndarray] = {}
    step_wall = step_cpu = key_wall = 0.0
    keys = 0
    for i, img in enumerate(images):
        t0, c0 = time.perf_counter(), time.process_time()
        if i % every == 0:
            carrier.keyframe(img, [masks[i]])
            key_wall += time.perf_counter() - t0
            keys += 1
            continue
        carried = carrier.step(img)[0]
        step_wall += time.perf_counter() - t0
        step_cpu += time.process_time() - c0
        out[i] = carried if carried is not None else np.zeros((h, w), bool)
    n = max(1, len(out))
    return out, {"ms": 1000 * step_wall / n, "cpu_ms": 1000 * step_cpu / n,
                 "key_ms": 1000 * key_wall / max(1, keys)}


def bench_sequence(seq: Path, every: int, configs: dict[str, CarryConfig], out_dir: Path) -> dict:
    stems, images, masks = load_sequence(seq)
    carried_idx = [i for i in range(len(images)) if i % every]
    result: dict = {"sequence": seq.name, "frames": len(images), "size": [images[0].shape[1], images[0].shape[0]],
                    "carried": len(carried_idx), "J": {}, "ms": {},
                    "cpu_ms": {}, "key_ms": {}}
    result["hold"] = float(np.mean([iou(masks[i - i % every], masks[i]) for i in carried_idx])) if carried_idx else None
    for k, (name, cfg) in enumerate(configs.items()):
        pred, timing = carry_sequence(images, masks, every, cfg)
        result["J"][name] = float(np.mean([iou(pred[i], masks[i]) for i in carried_idx])) if carried_idx else None
        for key in ("ms", "cpu_ms", "key_ms"):
            result[key][name] = round(timing[key], 2)
        if k == 0:
            dest = out_dir / seq.name
            dest.mkdir(parents=True, exist_ok=True)
            for i in carried_idx:
                path = dest / f"{stems[i]}.png"
                if not cv2.imwrite(str(path), pred[i].astype(np.uint8) * 255):
                    raise BadInputError(f"cannot write {path}")
    return result


def run(root: Path, every: int, out_dir: Path, methods: list[str], names: Optional[list[str]] = None,
        progress=None) -> dict:
    if every < 2:
        raise BadInputError("--every must be at least 2 (a keyframe every K frames, K-1 carried between)")
    configs = {spec: parse_method(spec) for spec in (methods or DEFAULT_METHODS)}
    seqs = find_sequences(root, names)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"--out is not a folder: {out_dir}")
    ensure_writable_dir(out_dir, "--out")
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # the target is per core
    try:
        rows = []
        for seq in seqs:
            rows.append(bench_sequence(seq, every, configs, out_dir))
            if progress:
                progress(rows[-1])
    finally:
        cv2.setNumThreads(threads)
    scored = [r for r in rows if r["hold"] is not None]
    mean = {"hold": _mean([r["hold"] for r in scored]),
            "J": {m: _mean([r["J"][m] for r in scored]) for m in configs},
            "ms": {m: _mean([r["ms"][m] for r in rows]) for m in configs},
            "cpu_ms": {m: _mean([r["cpu_ms"][m] for r in rows]) for m in configs}}
    return {"root": str(root), "every": every, "methods": list(configs), "out": str(out_dir),
            "sequences": rows, "mean": mean}


def _mean(values: list[float]) -> Optional[float]:
    return round(float(np.mean(values)), 4) if values else None


def print_report(report: dict, json_out: bool, console) -> None:
    if json_out:
        print(json.dumps(report))
        return
    from rich.table import Table

    methods = report["methods"]
    table = Table(title=f"Masks carried between keyframes every {report['every']} frames "
                        f"(J = mean IoU over carried frames; wall and CPU ms per carried frame, 1 OpenCV thread)")
    table.add_column("sequence")
    table.add_column("carried", justify="right")
    table.add_column("J hold", justify="right")
    for m in methods:
        table.add_column(f"J {m}", justify="right")
        table.add_column("x hold", justify="right")
        table.add_column("ms", justify="right")
        table.add_column("cpu ms", justify="right")
    rows = [(r["sequence"], str(r["carried"]), r["hold"], r["J"], r["ms"], r["cpu_ms"]) for r in report["sequences"]]
    mean = report["mean"]
    rows.append(("mean", "", mean["hold"], mean["J"], mean["ms"], mean["cpu_ms"]))
    for name, carried, hold, js, ms, cpu in rows:
        cells = [name, carried, _fmt(hold)]
        for m in methods:
            ratio = js[m] / hold if js[m] is not None and hold else None
            cells += [_fmt(js[m]), "" if ratio is None else f"{ratio:.2f}", f"{ms[m]:.1f}", f"{cpu[m]:.1f}"]
        table.add_row(*cells, end_section=name == report["sequences"][-1]["sequence"])
    console.print(table)
    console.print(f"carried masks of {methods[0]}: {report['out']}", highlight=False)


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"
