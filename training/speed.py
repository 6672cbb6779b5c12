"""Milliseconds per caption (encoder + decoder, one image at a time) of caption checkpoints.

    python -m training.speed --model streamcap/assets/caption_flickr8k_lite0.pt \
        --model runs/lite2/best.pt --image samples/dog.jpg --threads 1 --runs 15

Each round times every model with greedy decoding and with beam search (``--beam``) on the same
photo, interleaved so that a change of machine load hits all of them alike; the report is the
median over the rounds (after one warm-up round), from reading the photo's pixels to the words:
resizing, the encoder and the decoder. One line per model and method, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from streamcap.errors import StreamcapError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True, help="caption checkpoint (repeatable)")
    p.add_argument("--image", type=Path, required=True, help="a photo")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    p.add_argument("--runs", type=int, default=15, help="timed rounds (median reported)")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def measure(models: list[Path], image: Path, runs: int, beam: int) -> list[dict]:
    """[{model, encoder, input_size, method, median_ms, min_ms, caption}] per model and method."""
    import numpy as np

    from streamcap.caption.api import Captioner
    from streamcap.caption.api import read_image_rgb

    rgb = np.ascontiguousarray(read_image_rgb(image))
    capt = {(m, b): Captioner(m, device="cpu", beam=b) for m in models for b in (1, beam)}
    times: dict[tuple, list[float]] = {k: [] for k in capt}
    words: dict[tuple, str] = {}
    with torch.inference_mode():
        for r in range(runs + 1):
            for key, c in capt.items():
                t0 = time.perf_counter()
                words[key] = c.caption_images([rgb], batch_size=1)[0].text
                if r:  # round 0 warms up
                    times[key].append((time.perf_counter() - t0) * 1000)
    return [{"model": str(m), "encoder": c.encoder.name, "input_size": c.input_size,
             "method": "greedy" if b == 1 else f"beam {b}",
             "median_ms": round(statistics.median(times[(m, b)]), 1),
             "min_ms": round(min(times[(m, b)]), 1), "caption": words[(m, b)]}
            for (m, b), c in capt.items()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        rows = measure(args.model, args.image, max(1, args.runs), max(2, args.beam))
    except StreamcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        torch.set_num_threads(old)
    if args.json:
        print(json.dumps({"threads": args.threads, "runs": args.runs, "rows": rows}))
    else:
        for row in rows:
            print(f"{row['model']} ({row['encoder']}, {row['input_size']} px) {row['method']}: "
                  f"{row['median_ms']} ms median, {row['min_ms']} ms min: {row['caption']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
