"""Measure object guidance (``streamcap/caption/guidance.py``) on a captioned split.

There are no COCO detections of the Flickr8k photos offline, so the objects are taken from the
reference captions: a COCO class counts as present when at least ``--min-refs`` of an image's
references name it with the table's words (``COCO_WORDS``). That simulates a perfect detector
for the classes the table knows. For each (bonus, penalty) pair the split is captioned with
beam search guided by those objects, and for no guidance as the baseline:

    python -m training.guidance_eval --model streamcap/assets/caption_flickr8k_lite0.pt \\
        --images DIR --captions captions.txt --split-file dev.txt --beam 3 \\
        --grid 1:3 2:3 2:5 [--cache-dir ...] [--json out.json]

Reported per setting: BLEU-4 and CIDEr-D against the references, and over the images with at
least one present class, ``objects_right``: the share whose caption names at least one present
class and no absent one, and ``objects_exact``: the share naming every present class and no
absent one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamcap.errors import BadInputError, StreamcapError
from training.data import clean
from training.datasets import FORMATS, load_captions, read_split_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.guidance_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="caption checkpoint")
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--captions", required=True, type=Path)
    p.add_argument("--dataset", default="flickr8k", choices=FORMATS)
    p.add_argument("--split-file", required=True, type=Path, help="the images to caption")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--min-refs", type=int, default=2, help="references that must name a class")
    p.add_argument("--grid", nargs="+", default=["1:3"], metavar="BONUS:PENALTY",
                   help="guidance settings to measure (default: 1:3)")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "streamcap" / "features")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the figures here")
    return p


def parse_grid(items: list[str]) -> list[tuple[float, float]]:
    out = []
    for item in items:
        try:
            bonus, penalty = (float(x) for x in item.split(":"))
        except ValueError:
            raise BadInputError(f"--grid {item!r}: expected BONUS:PENALTY, e.g. 1:3") from None
        out.append((bonus, penalty))
    return out


def reference_labels(refs: list[list[list[str]]], min_refs: int) -> list[set[str]]:
    """Per image: the COCO classes that at least ``min_refs`` references name."""
    from streamcap.caption.guidance import labels_in_text

    out = []
    for image_refs in refs:
        counts: dict[str, int] = {}
        for r in image_refs:
            for label in labels_in_text(r):
                counts[label] = counts.get(label, 0) + 1
        out.append({label for label, n in counts.items() if n >= min_refs})
    return out


def object_agreement(hyps: list[list[str]], present: list[set[str]]) -> tuple[float, float]:
    """Over the images with a present class: the share whose caption names at least one present
    class and no absent one (``right``), and the share naming exactly the present ones (``exact``)."""
    from streamcap.caption.guidance import labels_in_text

    judged = [(labels_in_text(h), p) for h, p in zip(hyps, present) if p]
    if not judged:
        return float("nan"), float("nan")
    right = sum(bool(said & p) and said <= p for said, p in judged) / len(judged)
    exact = sum(said == p for said, p in judged) / len(judged)
    return right, exact


def run(args) -> dict:
    from streamcap.caption.checkpoint import load_checkpoint
    from streamcap.caption.guidance import ObjectGuide
    from training.evaluate import decode_all
    from training.features import build_cache
    from training.metrics import CiderD, bleu

    if args.threads:
        torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    ck = load_checkpoint(args.model)
    data = load_captions(args.dataset, args.captions)
    names = [n for n in read_split_file(args.split_file) if (args.images / n).is_file()]
    names = names[: args.max_images or None]
    if not names:
        raise BadInputError("no images to caption (check --split-file and --images)")
    refs = [[clean(c) for c in data.captions[n]] for n in names]
    present = reference_labels(refs, args.min_refs)
    cache = build_cache(sorted(names), args.images, args.cache_dir, ck.encoder_name, ck.input_size,
                        progress=False, encoder_state=ck.encoder_state)
    feats = cache.rows(names)
    cider = CiderD(refs)
    stoi = ck.vocab.stoi
    result = {"model": str(args.model), "images": len(names), "beam": args.beam, "min_refs": args.min_refs,
              "images_with_objects": sum(1 for p in present if p), "settings": []}
    for setting in [None] + grid:
        t = time.time()
        guides = None
        if setting is not None:
            guides = [ObjectGuide(p, stoi, len(ck.vocab), bonus=setting[0], penalty=setting[1]) if p else None
                      for p in present]
        hyps = decode_all(ck.decoder, feats, ck.vocab, args.beam, args.max_len, None, batch=100, guides=guides)
        m = bleu(hyps, refs)
        row = {"bonus": setting[0] if setting else None, "penalty": setting[1] if setting else None,
               "bleu4": round(m["bleu4"], 4), "cider_d": round(cider.score(hyps)[0], 4),
               "seconds": round(time.time() - t, 1)}
        right, exact = object_agreement(hyps, present)
        row.update(objects_right=round(right, 4), objects_exact=round(exact, 4))
        result["settings"].append(row)
        label = "none" if setting is None else f"{setting[0]:g}:{setting[1]:g}"
        print(f"guidance {label:>8}  BLEU-4 {row['bleu4']:.4f}  CIDEr-D {row['cider_d']:.4f}  "
              f"objects right {row['objects_right']:.1%} (exact {row['objects_exact']:.1%})  ({row['seconds']} s)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except StreamcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
