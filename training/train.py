"""Train the caption decoder on frozen, cached image features (or, with --fine-tune-blocks,
together with the encoder's last blocks, from images).

    python -m training.train --dataset flickr8k --images DIR --captions FILE \\
        [--split-file train.txt --val-split-file dev.txt] --out runs/NAME

Outputs in --out: best.pt (best dev checkpoint), last.pt, resume.pt (decoder, optimizer,
scheduler, step/epoch, early-stopping state), metrics.jsonl (one line per evaluation),
curves.png (loss and dev metrics), run.json (arguments and command).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

from streamcap.caption.encoder import ENCODER_NAMES
from streamcap.errors import BadInputError, StreamcapError
from training.datasets import FORMAT_HELP, FORMATS, load_captions, make_splits
from training.data import clean, encode_captions
from training.trainer import (Progress, Rate, Trainer, evaluate_greedy, export_small,  # noqa: F401
                              lr_factor, pick_device, plot_curves, resolve_image_size)

DEFAULT_CACHE = Path.home() / ".cache" / "streamcap" / "features"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FORMAT_HELP)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=FORMATS, help="captions file format (below)")
    g.add_argument("--images", required=True, type=Path, help="folder holding the images")
    g.add_argument("--captions", required=True, type=Path, help="captions file")
    g.add_argument("--split-file", type=Path, help="training image names, one a line")
    g.add_argument("--val-split-file", type=Path, help="dev image names, one a line")
    g.add_argument("--val-fraction", type=float, default=0.1, help="dev share for a seeded split")
    g.add_argument("--max-train-images", type=int, default=0, help="use only the first N (0: all)")
    g.add_argument("--max-val-images", type=int, default=0, help="evaluate on the first N dev images")
    g.add_argument("--min-count", type=int, default=5, help="vocabulary: minimum word count")
    g.add_argument("--max-len", type=int, default=20, help="caption tokens kept (longer are cut)")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    g.add_argument("--encoder", default="efficientnet_lite0", choices=ENCODER_NAMES)
    g.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the encoder's native size: 224 for Lite0 and "
                        "ResNet-50, 240 for Lite1, 260 for Lite2)")
    g.add_argument("--flip-aug", action="store_true",
                   help="also cache horizontally flipped features; each sample uses them with "
                        "p=0.5 ('left'/'right' swapped in its caption)")
    g = p.add_argument_group("model")
    g.add_argument("--embed-dim", type=int, default=256)
    g.add_argument("--hidden-dim", type=int, default=512)
    g.add_argument("--attention-dim", type=int, default=256)
    g.add_argument("--dropout", type=float, default=0.3)
    g.add_argument("--no-attention", action="store_true", help="Show-and-Tell (mean feature)")
    g.add_argument("--project-dim", type=int, default=0,
                   help="train on features projected to D principal directions (context gate "
                        "fixed open); the saved decoder has the projection folded in and takes "
                        "the full encoder output (0: off). ~2x faster on CPU at D=256")
    g.add_argument("--fine-tune-blocks", type=int, default=0, metavar="N",
                   help="also train the encoder's last N blocks, from images (no feature cache; "
                        "slow on CPU, meant for GPUs). 0: frozen encoder, cached features")
    g.add_argument("--encoder-lr", type=float, default=1e-4,
                   help="learning rate of the fine-tuned encoder blocks (same schedule as --lr)")
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no cap)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=1e-2)
    g.add_argument("--warmup-steps", type=int, default=200)
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    g.add_argument("--min-lr-ratio", type=float, default=0.05, help="cosine floor as a share of --lr")
    g.add_argument("--clip", type=float, default=5.0, help="gradient norm clip (0: off)")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--alpha-c", type=float, default=1.0, help="attention regularization weight")
    g.add_argument("--amp", choices=("auto", "off", "bf16"), default="auto",
                   help="auto: fp16 autocast + grad scaling on CUDA, off on CPU; bf16: bfloat16 "
                        "autocast (CPU or GPU)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("evaluation, early stopping, checkpoints")
    g.add_argument("--out", type=Path, required=True, help="run folder")
    g.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: per epoch)")
    g.add_argument("--metric", choices=("cider_d", "bleu4"), default="cider_d",
                   help="dev metric (greedy decoding) for best.pt and early stopping")
    g.add_argument("--patience", type=int, default=3, help="evaluations without improvement")
    g.add_argument("--average-last", type=int, default=0,
                   help="also try the average of the last N evaluated weights; kept if better on dev")
    g.add_argument("--resume", type=Path, help="resume.pt (or its run folder) to continue from")
    g.add_argument("--export", type=Path, help="also write best weights as a small fp16 checkpoint here")
    g.add_argument("--no-progress", action="store_true", help="plain log lines instead of bars")
    g = p.add_argument_group("self-critical sequence training (training/scst.py)")
    g.add_argument("--scst", action="store_true",
                   help="fine-tune a trained decoder with the CIDEr-D reward (needs --init, or "
                        "--resume of an SCST run); --out is a new run folder")
    g.add_argument("--init", type=Path, help="caption checkpoint (best.pt or an exported .pt) to start SCST from")
    g.add_argument("--scst-epochs", type=int, default=10)
    g.add_argument("--scst-lr", type=float, default=5e-5)
    g.add_argument("--scst-images", type=int, default=50, help="images per SCST step")
    g.add_argument("--scst-samples", type=int, default=5, help="sampled captions per image")
    g.add_argument("--scst-baseline", choices=("greedy", "mean"), default="greedy",
                   help="reward baseline: the greedy caption's CIDEr-D (Rennie et al.) or the "
                        "mean reward of the image's other samples")
    g.add_argument("--scst-max-len", type=int, default=16, help="longest sampled caption (words)")
    g.add_argument("--scst-temperature", type=float, default=1.0,
                   help="sample from softmax(logits / T); the policy trained is that distribution")
    g.add_argument("--scst-dropout", choices=("on", "off"), default="on",
                   help="dropout while sampling (off: the decoder samples as it decodes at test time)")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Prepared:
    """Everything derived from the dataset: splits, vocab, encoded captions, features."""

    def __init__(self, args, log=print):
        from streamcap.caption.vocab import Vocab
        from training.features import build_cache

        resolve_image_size(args)
        data = load_captions(args.dataset, args.captions)
        splits = make_splits(data, args.split_file, args.val_split_file, args.val_fraction,
                             args.seed, images_dir=args.images)
        self.train_images = splits["train"][: args.max_train_images or None]
        self.dev_images = splits["dev"][: args.max_val_images or None]
        if not self.dev_images:
            raise BadInputError("the dev split is empty (check --val-split-file / --val-fraction)")
        self.train_tokens = [[clean(c) for c in data.captions[n]] for n in self.train_images]
        self.dev_refs = [[clean(c) for c in data.captions[n]] for n in self.dev_images]
        if getattr(args, "vocab", None) is not None:
            self.vocab = args.vocab
        else:
            self.vocab = Vocab.build((t for caps in self.train_tokens for t in caps), args.min_count)
        self.encoded = encode_captions(self.train_tokens, self.vocab, args.max_len)
        log(f"{len(self.train_images)} train images ({len(self.encoded.ids)} captions), "
            f"{len(self.dev_images)} dev images, vocabulary {len(self.vocab)} words "
            f"(min count {args.min_count}), max length {args.max_len}")
        if getattr(args, "fine_tune_blocks", 0) > 0:  # features come from the encoder at each step
            self.train_feats = self.dev_feats = self.flip_feats = self.projection = None
            return
        names = sorted(set(self.train_images) | set(self.dev_images))
        cache = build_cache(names, args.images, args.cache_dir, args.encoder, args.image_size,
                            progress=not args.no_progress,
                            encoder_state=getattr(args, "encoder_state", None))
        self.train_feats = cache.rows(self.train_images)  # (N, L, C) float16 in RAM
        self.dev_feats = cache.rows(self.dev_images)
        self.flip_feats = None
        if args.flip_aug:
            fcache = build_cache(sorted(self.train_images), args.images, args.cache_dir, args.encoder,
                                 args.image_size, flip=True, progress=not args.no_progress)
            self.flip_feats = fcache.rows(self.train_images)
        self.projection = None
        if args.project_dim:
            from training.project import fit_projection, project

            P = getattr(args, "projection", None)
            self.projection = P if P is not None else fit_projection(self.train_feats, args.project_dim,
                                                                     seed=args.seed)
            self.train_feats = project(self.train_feats, self.projection)
            self.dev_feats = project(self.dev_feats, self.projection)
            if self.flip_feats is not None:
                self.flip_feats = project(self.flip_feats, self.projection)
        self.feature_dim = self.train_feats.shape[2]


def load_resume(args) -> dict | None:
    """The saved state of --resume (also sets args.vocab / args.projection), or None."""
    from streamcap.caption.vocab import Vocab

    if args.resume is None:
        return None
    rpath = args.resume / "resume.pt" if args.resume.is_dir() else args.resume
    if not rpath.is_file():
        raise BadInputError(f"--resume {rpath}: no such file")
    resume = torch.load(rpath, map_location="cpu", weights_only=True)
    args.vocab = Vocab.from_dict(resume["vocab"])
    if resume.get("projection") is not None:
        args.projection = resume["projection"].numpy()
    if int(resume.get("fine_tune_blocks", 0)) == 0 and resume.get("encoder_state") is not None:
        args.encoder_state = resume["encoder_state"]  # SCST on a fine-tuned, now frozen, encoder
    if int(resume.get("fine_tune_blocks", 0)) != args.fine_tune_blocks:
        raise BadInputError(f"--resume {rpath} was trained with --fine-tune-blocks "
                            f"{int(resume.get('fine_tune_blocks', 0))}; pass the same value")
    objective = resume.get("objective", "xe")
    if objective != ("scst" if args.scst else "xe"):
        kind = "an SCST" if objective == "scst" else "a cross-entropy"
        raise BadInputError(f"--resume {rpath} is {kind} run; "
                            f"{'add' if objective == 'scst' else 'drop'} --scst")
    return resume


def validate(args) -> None:
    resolve_image_size(args)
    if args.scst:
        from training.scst import validate_scst

        validate_scst(args)
    elif args.init is not None:
        raise BadInputError("--init is for --scst (a cross-entropy run starts from scratch or --resume)")
    if args.fine_tune_blocks > 0 and args.project_dim:
        raise BadInputError("--fine-tune-blocks cannot be combined with --project-dim")
    if args.fine_tune_blocks > 0 and args.average_last:
        raise BadInputError("--fine-tune-blocks cannot be combined with --average-last")


def setup_xe(args, resume) -> Trainer:
    """Data, decoder, optimizer for cross-entropy training (teacher forcing)."""
    from streamcap.caption.model import CaptionDecoder, CaptionModelConfig

    device = pick_device(args.device)
    seed_everything(args.seed)
    prep = Prepared(args, log=lambda m: print(m, flush=True))
    encoder = None
    if args.fine_tune_blocks > 0:
        from training import finetune as ft

        encoder = ft.build_finetune_encoder(args.encoder, args.fine_tune_blocks, device)
        if resume is not None:
            encoder.load_state_dict(resume["encoder_state"])
        prep.feature_dim = encoder.out_channels
        prep.dev_feats = ft.OnTheFlyFeatures(encoder, args.images, prep.dev_images,
                                             args.image_size, device)
    cfg = CaptionModelConfig(vocab_size=len(prep.vocab), feature_dim=prep.feature_dim,
                             embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                             attention_dim=args.attention_dim, dropout=args.dropout,
                             attention=not args.no_attention)
    if resume is not None:
        cfg = CaptionModelConfig(**resume["model_args"])
    decoder = CaptionDecoder(cfg).to(device).train()
    if prep.projection is not None:
        from training.project import open_gate

        open_gate(decoder)
    steps_per_epoch = math.ceil(len(prep.encoded.ids) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    tr = Trainer(args, prep, decoder, device, "xe", args.lr, total_steps, args.warmup_steps,
                 encoder=encoder, projection=prep.projection, resume=resume)
    tr.steps_per_epoch = steps_per_epoch
    return tr


def xe_batch(tr: Trainer, rows: np.ndarray, gen: torch.Generator, feats_all, flips, ids_all, owners):
    """Features (B, L, C) and captions (B, T) of one batch of caption rows, augmented."""
    args, prep = tr.args, tr.prep
    rows_t = torch.from_numpy(rows)
    img = owners[rows_t]
    caps = ids_all[rows_t][:, :int(prep.encoded.lengths[rows].max())]  # (B, T) trimmed to the longest
    if tr.encoder is not None:  # encode the batch's distinct images, with gradients
        from training import finetune as ft

        uniq, inv = torch.unique(img, return_inverse=True)
        flip = (torch.rand(len(uniq), generator=gen) < 0.5 if args.flip_aug
                else torch.zeros(len(uniq), dtype=torch.bool))
        x = ft.load_images(args.images, [prep.train_images[i] for i in uniq.tolist()],
                           args.image_size, flip.tolist()).to(tr.device)
        caps = torch.where(flip[inv][:, None], tr.swap[caps], caps)
        with tr.autocast():
            feats = ft.encode(tr.encoder, x)[inv.to(tr.device)]  # (B, L, C)
    else:
        feats = feats_all[img]  # (B, L, C) float16
    if flips is not None:
        use = torch.rand(len(rows), generator=gen) < 0.5
        if use.any():
            feats = torch.where(use[:, None, None], flips[img], feats)
            caps = torch.where(use[:, None], tr.swap[caps], caps)
    return feats.to(tr.device).float(), caps.to(tr.device)


def train_xe(tr: Trainer) -> dict:
    """Cross-entropy training with teacher forcing, label smoothing and attention regularization."""
    from streamcap.caption.model import caption_loss
    from training.data import epoch_batches

    args, prep = tr.args, tr.prep
    n_caps = len(prep.encoded.ids)
    feats_all = torch.from_numpy(prep.train_feats) if tr.encoder is None else None
    flips = torch.from_numpy(prep.flip_feats) if prep.flip_feats is not None else None
    ids_all = torch.from_numpy(prep.encoded.ids)
    owners = torch.from_numpy(prep.encoded.image_index)
    gen = torch.Generator().manual_seed(args.seed * 1000 + tr.step)
    rate = Rate()
    stop = tr.step >= tr.total_steps
    with Progress(not args.no_progress, tr.total_steps, tr.step) as prog:
        while not stop:
            batches = epoch_batches(n_caps, prep.encoded.lengths, args.batch_size, args.seed, tr.epoch)
            skip = tr.step - tr.epoch * tr.steps_per_epoch  # batches of this epoch already done
            for bi, rows in enumerate(batches):
                if bi < skip:
                    continue
                feats, caps = xe_batch(tr, rows, gen, feats_all, flips, ids_all, owners)
                tr.set_lr()
                with tr.autocast():
                    logits, alphas = tr.decoder(feats, caps)  # (B, T-1, V), (B, T-1, L)
                loss = caption_loss(logits.float(), caps, alphas.float(), tr.vocab.pad_id,
                                    args.alpha_c, args.label_smoothing)
                tr.optimizer_step(loss)
                tr.log_step(prog, rate.add(len(rows)))
                if tr.after_step(bi, len(batches), prog):
                    stop = True
                    break
            else:
                tr.epoch += 1
            if not tr.evaluated_now() and tr.evaluate(tr.recent_loss(), prog):
                stop = True
            if tr.epoch >= args.epochs:
                stop = True
    return tr.finish()


def train(args) -> dict:
    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        validate(args)
        args.out.mkdir(parents=True, exist_ok=True)
        resume = load_resume(args)
        if args.scst:
            from training.scst import setup_scst, train_scst

            return train_scst(setup_scst(args, resume))
        return train_xe(setup_xe(args, resume))
    finally:
        torch.set_num_threads(old_threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except StreamcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
