"""Evaluate a caption checkpoint: BLEU-1..4 and CIDEr-D, greedy and beam, with baselines.

    python -m training.evaluate --model CKPT --images DIR --captions FILE \\
        --split-file dev.txt [--train-split-file train.txt] [--beam 3] \\
        [--json out.json] [--samples samples.html]

Metrics use the training tokenizer (lowercase alphanumeric tokens) on candidates and
references alike. BLEU: NLTK corpus_bleu with all references. CIDEr-D: written from
Vedantam et al. 2015 (training/metrics.py). METEOR and SPICE are not reported: their
reference implementations need Java and downloaded resources (WordNet, Stanford CoreNLP).
Baselines, on the same images with the same encoder features: the best constant caption
(searched over training captions on this split, an upper bound for any constant) and
nearest-neighbour retrieval (consensus caption of the k nearest training images).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamcap.errors import BadInputError, StreamcapError
from training.datasets import FORMAT_HELP, FORMATS, load_captions, read_split_file
from training.data import clean

DEFAULT_CACHE = Path.home() / ".cache" / "streamcap" / "features"
NOTE = ("METEOR and SPICE are not reported: their reference implementations need Java and "
        "downloaded resources (WordNet, Stanford CoreNLP).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=FORMAT_HELP)
    p.add_argument("--model", required=True, type=Path, help="caption checkpoint (.pt)")
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--captions", required=True, type=Path)
    p.add_argument("--dataset", default="flickr8k", choices=FORMATS)
    p.add_argument("--split-file", type=Path, help="images to evaluate, one a line "
                   "(default: the dataset's dev/test split, else every captioned image)")
    p.add_argument("--train-split-file", type=Path,
                   help="training images for the baselines (default: captioned images not evaluated)")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--length-penalty", type=float, default=None, help="beam/greedy length penalty")
    p.add_argument("--block-repeat-ngram", type=int, default=0,
                   help="beam search: forbid repeating an n-gram of this size (0: off)")
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N only")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--nn-k", type=int, default=5, help="neighbours for the retrieval baseline")
    p.add_argument("--constant-candidates", type=int, default=200)
    p.add_argument("--json", type=Path, help="write all figures here (JSON)")
    p.add_argument("--samples", type=Path, help="write a sample sheet (HTML) here")
    p.add_argument("--n-samples", type=int, default=24)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def decode_all(decoder, feats: np.ndarray, vocab, beam: int, max_len: int, length_penalty,
               batch: int = 200, block_repeat_ngram: int = 0, guides: list | None = None) -> list[list[str]]:
    """Captions (token lists) of every row of ``feats``; ``guides``: one ``ObjectGuide`` or None
    per row (beam search only)."""
    from streamcap.caption.decode import beam_search, greedy

    kw = {} if length_penalty is None else {"length_penalty": length_penalty}
    out = []
    for s in range(0, len(feats), batch):
        f = torch.from_numpy(np.asarray(feats[s:s + batch], dtype=np.float32))  # (B, L, C)
        if beam <= 1:
            res = greedy(decoder, f, max_len=max_len, **kw)
            out.extend(vocab.decode_tokens(ids) for ids, _ in res)
        else:
            res = beam_search(decoder, f, beam=beam, max_len=max_len, block_repeat_ngram=block_repeat_ngram,
                              guides=guides[s:s + batch] if guides is not None else None, **kw)
            out.extend(vocab.decode_tokens(r[0][0]) if r else [] for r in res)
    return out


def write_samples(path: Path, images_dir: Path, names, rows: dict[str, list], refs, n: int) -> None:
    """HTML sheet: image, generated captions (one per method), references."""
    parts = ["<!doctype html><meta charset='utf-8'><title>streamcap caption samples</title>",
             "<style>body{font-family:sans-serif} td{vertical-align:top;padding:6px;"
             "border-bottom:1px solid #ccc} .m{color:#06c} .r{color:#555;font-size:90%}</style>",
             "<table>"]
    step = max(1, len(names) // max(1, n))
    for i in list(range(0, len(names), step))[:n]:
        img = (Path(images_dir) / names[i]).read_bytes()
        src = "data:image/jpeg;base64," + base64.b64encode(img).decode("ascii")
        gen = "".join(f"<div class='m'><b>{html.escape(k)}:</b> {html.escape(' '.join(v[i]))}</div>"
                      for k, v in rows.items())
        ref = "".join(f"<div class='r'>{html.escape(' '.join(r))}</div>" for r in refs[i])
        parts.append(f"<tr><td><img src='{src}' width=224><br><small>{html.escape(names[i])}"
                     f"</small></td><td>{gen}<hr>{ref}</td></tr>")
    parts.append("</table>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")


def evaluate(args) -> dict:
    from streamcap.caption.checkpoint import load_checkpoint
    from training.baselines import best_constant, constant_candidates, nearest_neighbour
    from training.features import build_cache, weights_tag
    from training.metrics import CiderD, bleu

    old = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        t0 = time.time()
        ck = load_checkpoint(args.model)
        data = load_captions(args.dataset, args.captions)
        present = [n for n in data.images if (args.images / n).is_file()]
        if args.split_file is not None:
            known = set(present)
            eval_names = [n for n in read_split_file(args.split_file) if n in known]
        elif data.splits:
            eval_names = [n for n in present if data.splits.get(n) in ("dev", "test")]
        else:
            eval_names = present
        eval_names = eval_names[: args.max_images or None]
        if not eval_names:
            raise BadInputError("no images to evaluate (check --split-file and --images)")
        eval_set = set(eval_names)
        if args.train_split_file is not None:
            known = set(present)
            train_names = [n for n in read_split_file(args.train_split_file) if n in known]
        else:
            train_names = [n for n in present if n not in eval_set]
        refs = [[clean(c) for c in data.captions[n]] for n in eval_names]
        # A fine-tuned checkpoint carries its encoder's weights: its features come from them
        # (cached under their hash), never from the pretrained encoder of the same name.
        cache = build_cache(sorted(eval_set | set(train_names if not args.no_baselines else ())),
                            args.images, args.cache_dir, ck.encoder_name, ck.input_size,
                            progress=not args.no_progress, encoder_state=ck.encoder_state)
        feats = cache.rows(eval_names)  # (N, L, C) float16
        if feats.shape[2] != ck.decoder.cfg.feature_dim:
            raise BadInputError(f"{args.model}: decoder takes {ck.decoder.cfg.feature_dim} channels, "
                                f"encoder {ck.encoder_name} gives {feats.shape[2]}")
        cider = CiderD(refs)
        result = {"model": str(args.model), "encoder": ck.encoder_name,
                  "encoder_weights": weights_tag(ck.encoder_state) or "pretrained", "images": len(eval_names),
                  "references_per_image": round(float(np.mean([len(r) for r in refs])), 2),
                  "split_file": str(args.split_file) if args.split_file else None,
                  "tokenization": "streamcap.caption.vocab.tokenize (lowercase alphanumeric)",
                  "beam": args.beam, "length_penalty": args.length_penalty,
                  "block_repeat_ngram": args.block_repeat_ngram, "note": NOTE, "methods": {}}
        hyps_by = {}
        for name, beam in (("greedy", 1), (f"beam{args.beam}", args.beam)):
            if name in hyps_by:
                continue
            t = time.time()
            hyps = decode_all(ck.decoder, feats, ck.vocab, beam, args.max_len, args.length_penalty,
                              block_repeat_ngram=args.block_repeat_ngram)
            m = bleu(hyps, refs)
            m["cider_d"] = cider.score(hyps)[0]
            m["mean_length"] = float(np.mean([len(h) for h in hyps]))
            m["vocab_used"] = len({w for h in hyps for w in h})
            m["seconds"] = round(time.time() - t, 1)
            result["methods"][name] = m
            hyps_by[name] = hyps
        if not args.no_baselines and train_names:
            train_refs = [[clean(c) for c in data.captions[n]] for n in train_names]
            cands = constant_candidates(train_refs, args.constant_candidates)
            const = best_constant(cands, refs, cider)
            result["baselines"] = {"constant": const}
            hyps_by["constant"] = [const["by_cider_d"]["caption"].split()] * len(eval_names)
            train_pooled = cache.rows(train_names).astype(np.float32).mean(axis=1)  # (N, C)
            eval_pooled = feats.astype(np.float32).mean(axis=1)
            nn_hyps = nearest_neighbour(train_pooled, train_refs, eval_pooled, k=args.nn_k)
            nn = bleu(nn_hyps, refs)
            nn["cider_d"] = cider.score(nn_hyps)[0]
            nn["k"] = args.nn_k
            nn["train_images"] = len(train_names)
            result["baselines"]["nearest_neighbour"] = nn
            hyps_by["nearest neighbour"] = nn_hyps
            beam_c = result["methods"][f"beam{args.beam}"]["cider_d"]
            result["beam_cider_d_over_nn"] = beam_c / nn["cider_d"] if nn["cider_d"] else None
        result["seconds"] = round(time.time() - t0, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
        if args.samples:
            write_samples(args.samples, args.images, eval_names, hyps_by, refs, args.n_samples)
        return result
    finally:
        torch.set_num_threads(old)


def format_table(result: dict) -> str:
    lines = [f"{'method':<22}{'BLEU-1':>8}{'BLEU-2':>8}{'BLEU-3':>8}{'BLEU-4':>8}{'CIDEr-D':>9}"]

    def row(name, m):
        lines.append(f"{name:<22}" + "".join(f"{m.get(k, float('nan')):>8.4f}" for k in
                                             ("bleu1", "bleu2", "bleu3", "bleu4")) +
                     f"{m.get('cider_d', float('nan')):>9.4f}")

    for name, m in result["methods"].items():
        row(name, m)
    b = result.get("baselines")
    if b:
        row("constant (by CIDEr-D)", b["constant"]["by_cider_d"])
        row(f"nearest nb. (k={b['nearest_neighbour']['k']})", b["nearest_neighbour"])
        lines.append(f"constant caption: '{b['constant']['by_cider_d']['caption']}'")
    lines.append(f"{result['images']} images; {result['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except StreamcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
