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
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamcap.errors import BadInputError, StreamcapError
from training.datasets import FORMAT_HELP, FORMATS, load_captions, make_splits
from training.data import clean, encode_captions, epoch_batches, flip_swap_table

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
    g.add_argument("--encoder", default="efficientnet_lite0", choices=("efficientnet_lite0", "resnet50"))
    g.add_argument("--image-size", type=int, default=224)
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
    return p


# ----------------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str, floor: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Prepared:
    """Everything derived from the dataset: splits, vocab, encoded captions, features."""

    def __init__(self, args, log=print):
        from streamcap.caption.vocab import Vocab
        from training.features import build_cache

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
                            progress=not args.no_progress)
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


def evaluate_greedy(decoder, feats: np.ndarray, refs, vocab, device, max_len: int,
                    batch: int = 250) -> tuple[dict, list[list[str]]]:
    from streamcap.caption.decode import greedy
    from training.metrics import all_metrics

    decoder.eval()
    hyps = []
    for s in range(0, len(feats), batch):
        f = torch.from_numpy(feats[s:s + batch].astype(np.float32)).to(device)
        hyps.extend(vocab.decode_tokens(ids) for ids, _ in greedy(decoder, f, max_len=max_len))
    decoder.train()
    return all_metrics(hyps, refs), hyps


def plot_curves(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in rows]
    ax[0].plot(steps, [r["train_loss"] for r in rows], label="train loss")
    ax[0].set_xlabel("step"), ax[0].set_ylabel("loss"), ax[0].legend()
    for key in ("cider_d", "bleu4"):
        ax[1].plot(steps, [r.get(key, float("nan")) for r in rows], marker="o", label=f"dev {key}")
    ax[1].set_xlabel("step"), ax[1].legend(), ax[1].set_title("dev, greedy")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def export_small(src: Path, dst: Path) -> Path:
    """Copy a checkpoint with an fp16 state dict (it loads back as float)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    def small(v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point():
            return v
        v = v.half()
        if v.numel() > 1 and bool((v == v.reshape(-1)[0]).all()):
            # a constant tensor (the projection-trained decoder's open gate weights are all 0):
            # stored as one element expanded (stride 0); load_state_dict copies it out in full
            return v.reshape(-1)[:1].clone().expand(v.shape)
        return v

    ckpt["state_dict"] = {k: small(v) for k, v in ckpt["state_dict"].items()}
    ckpt["train_info"] = dict(ckpt.get("train_info") or {}, state_dict_dtype="float16")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dst)
    return dst


class Progress:
    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = RP(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s  "
                                     "lr {task.fields[lr]:.2e}"),
                          TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"),
                                          ips=0.0, lr=0.0)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def update(self, step, loss, ips, lr):
        if self.bar:
            self.bar.update(self.task, completed=step, loss=loss, ips=ips, lr=lr)

    def log(self, msg):
        if self.bar:
            self.bar.console.log(msg)
        else:
            print(msg, flush=True)


def train(args) -> dict:
    from streamcap.caption.checkpoint import save_checkpoint
    from streamcap.caption.model import CaptionDecoder, CaptionModelConfig, caption_loss
    from streamcap.caption.vocab import Vocab

    old_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        device = pick_device(args.device)
        finetune = args.fine_tune_blocks > 0
        if finetune and args.project_dim:
            raise BadInputError("--fine-tune-blocks cannot be combined with --project-dim")
        if finetune and args.average_last:
            raise BadInputError("--fine-tune-blocks cannot be combined with --average-last")
        resume = None
        if args.resume is not None:
            rpath = args.resume / "resume.pt" if args.resume.is_dir() else args.resume
            if not rpath.is_file():
                raise BadInputError(f"--resume {rpath}: no such file")
            resume = torch.load(rpath, map_location="cpu", weights_only=True)
            args.vocab = Vocab.from_dict(resume["vocab"])
            if resume.get("projection") is not None:
                args.projection = resume["projection"].numpy()
            if int(resume.get("fine_tune_blocks", 0)) != args.fine_tune_blocks:
                raise BadInputError(f"--resume {rpath} was trained with --fine-tune-blocks "
                                    f"{int(resume.get('fine_tune_blocks', 0))}; pass the same value")
        seed_everything(args.seed)
        prep = Prepared(args, log=lambda m: print(m, flush=True))
        vocab = prep.vocab
        encoder = None
        if finetune:
            from training import finetune as ft

            encoder = ft.build_finetune_encoder(args.encoder, args.fine_tune_blocks, device)
            if resume is not None:
                encoder.load_state_dict(resume["encoder_state"])
            prep.feature_dim = encoder.out_channels
            prep.dev_feats = ft.OnTheFlyFeatures(encoder, args.images, prep.dev_images,
                                                 args.image_size, device)
        cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=prep.feature_dim,
                                 embed_dim=args.embed_dim, hidden_dim=args.hidden_dim,
                                 attention_dim=args.attention_dim, dropout=args.dropout,
                                 attention=not args.no_attention)
        if resume is not None:
            cfg = CaptionModelConfig(**resume["model_args"])
        decoder = CaptionDecoder(cfg).to(device).train()
        if prep.projection is not None:
            from training.project import fold, open_gate

            open_gate(decoder)
        encoder_feature_dim = (prep.projection.shape[0] if prep.projection is not None
                               else cfg.feature_dim)

        def shippable(dec):
            """The decoder to save: projection folded in, so it takes raw encoder features."""
            return fold(dec, prep.projection) if prep.projection is not None else dec
        trainable = [(n, p) for n, p in decoder.named_parameters() if p.requires_grad]
        decay = [p for n, p in trainable if p.dim() > 1 and "embed" not in n]
        no_decay = [p for n, p in trainable if not (p.dim() > 1 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": args.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        base_lrs = [args.lr, args.lr]
        if encoder is not None:  # third group: the encoder's unfrozen blocks
            groups.append({"params": ft.trainable_params(encoder), "weight_decay": args.weight_decay})
            base_lrs.append(args.encoder_lr)
        opt = torch.optim.AdamW(groups, lr=args.lr)
        clip_params = [p for g in groups for p in g["params"]]
        encoder_state = (lambda: encoder.state_dict()) if encoder is not None else (lambda: None)
        use_cuda_amp = args.amp == "auto" and device.type == "cuda"
        amp_dtype = torch.float16 if use_cuda_amp else (torch.bfloat16 if args.amp == "bf16" else None)
        scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)

        n_caps = len(prep.encoded.ids)
        steps_per_epoch = math.ceil(n_caps / args.batch_size)
        total_steps = steps_per_epoch * args.epochs
        if args.max_steps:
            total_steps = min(total_steps, args.max_steps)
        step, epoch, best, bad_evals = 0, 0, -1.0, 0
        history: list[dict] = []
        recent_states: list[dict] = []
        if resume is not None:
            decoder.load_state_dict(resume["state_dict"])
            opt.load_state_dict(resume["optimizer"])
            scaler.load_state_dict(resume.get("scaler", {}) or scaler.state_dict())
            step, epoch = int(resume["step"]), int(resume["epoch"])
            best, bad_evals = float(resume["best"]), int(resume["bad_evals"])
            history = list(resume.get("history", []))
            torch.set_rng_state(resume["torch_rng"])
            print(f"resumed from {args.resume} at step {step} (epoch {epoch}), best dev "
                  f"{args.metric} {best:.4f}", flush=True)
        swap = torch.from_numpy(flip_swap_table(vocab))
        run_info = {"argv": sys.argv, "command": "python -m training.train " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "args": {k: str(v) for k, v in vars(args).items()
                                                             if k != "vocab"}}
        (args.out / "run.json").write_text(json.dumps(run_info, indent=1))
        metrics_path = args.out / "metrics.jsonl"
        if resume is None and metrics_path.exists():
            metrics_path.unlink()

        def train_info(extra=None):
            info = {"step": step, "epoch": epoch, "dataset": args.dataset, "encoder": args.encoder,
                    "best_dev": best, "metric": args.metric, "max_len": args.max_len,
                    "min_count": args.min_count, "train_images": len(prep.train_images),
                    "dev_images": len(prep.dev_images), "command": run_info["command"],
                    "trained_feature_dim": cfg.feature_dim, "feature_dim": encoder_feature_dim,
                    "fine_tune_blocks": args.fine_tune_blocks}
            info.update(extra or {})
            return info

        def save_resume():
            torch.save({"state_dict": {k: v.cpu() for k, v in decoder.state_dict().items()},
                        "model_args": cfg.__dict__, "vocab": vocab.to_dict(),
                        "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                        "step": step, "epoch": epoch, "best": best, "bad_evals": bad_evals,
                        "history": history, "torch_rng": torch.get_rng_state(),
                        "projection": (None if prep.projection is None
                                       else torch.from_numpy(prep.projection)),
                        "fine_tune_blocks": args.fine_tune_blocks,
                        "encoder_state": (None if encoder is None else
                                          {k: v.cpu() for k, v in encoder.state_dict().items()})},
                       args.out / "resume.pt.tmp")
            (args.out / "resume.pt.tmp").replace(args.out / "resume.pt")

        def do_eval(train_loss: float, t_start: float, prog) -> bool:
            """Evaluate, log, checkpoint; True when early stopping says stop."""
            nonlocal best, bad_evals
            m, hyps = evaluate_greedy(decoder, prep.dev_feats, prep.dev_refs, vocab, device, args.max_len)
            row = {"step": step, "epoch": epoch, "train_loss": train_loss,
                   "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t_start, 1), **m,
                   "sample": " ".join(hyps[0])}
            history.append(row)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            plot_curves(history, args.out / "curves.png")
            if args.average_last:
                recent_states.append({k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()})
                del recent_states[:-args.average_last]
            improved = m[args.metric] > best
            if improved:
                best, bad_evals = m[args.metric], 0
                save_checkpoint(args.out / "best.pt", shippable(decoder), vocab, args.encoder,
                                train_info(train_info_metrics(m)), encoder_state=encoder_state(),
                                input_size=args.image_size)
            else:
                bad_evals += 1
            save_checkpoint(args.out / "last.pt", shippable(decoder), vocab, args.encoder,
                            train_info(train_info_metrics(m)), encoder_state=encoder_state(),
                            input_size=args.image_size)
            save_resume()
            prog.log(f"step {step} epoch {epoch}: loss {train_loss:.3f}  dev BLEU-4 {m['bleu4']:.4f} "
                     f"CIDEr-D {m['cider_d']:.4f}  {'*best*' if improved else f'({bad_evals} w/o gain)'}"
                     f"  e.g. '{row['sample']}'")
            return bad_evals >= args.patience

        def train_info_metrics(m):
            return {"dev_" + k: v for k, v in m.items()}

        t_start = time.time()
        start_step = step
        stop = step >= total_steps
        seen_images, t_rate, running = 0, time.time(), []
        feats_all = torch.from_numpy(prep.train_feats) if encoder is None else None
        flips = torch.from_numpy(prep.flip_feats) if prep.flip_feats is not None else None
        ids_all = torch.from_numpy(prep.encoded.ids)
        owners = torch.from_numpy(prep.encoded.image_index)
        gen = torch.Generator().manual_seed(args.seed * 1000 + step)
        with Progress(not args.no_progress, total_steps, step) as prog:
            while not stop:
                batches = epoch_batches(n_caps, prep.encoded.lengths, args.batch_size, args.seed, epoch)
                skip = step - epoch * steps_per_epoch  # batches of this epoch already done
                for bi, rows in enumerate(batches):
                    if bi < skip:
                        continue
                    rows_t = torch.from_numpy(rows)
                    img = owners[rows_t]
                    caps = ids_all[rows_t]
                    T = int(prep.encoded.lengths[rows].max())
                    caps = caps[:, :T]  # (B, T) trimmed to the longest in the batch
                    if encoder is not None:  # encode the batch's distinct images, with gradients
                        uniq, inv = torch.unique(img, return_inverse=True)
                        flip = (torch.rand(len(uniq), generator=gen) < 0.5 if args.flip_aug
                                else torch.zeros(len(uniq), dtype=torch.bool))
                        x = ft.load_images(args.images, [prep.train_images[i] for i in uniq.tolist()],
                                           args.image_size, flip.tolist()).to(device)
                        caps = torch.where(flip[inv][:, None], swap[caps], caps)
                        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                            enabled=amp_dtype is not None):
                            feats = ft.encode(encoder, x)[inv.to(device)]  # (B, L, C)
                    else:
                        feats = feats_all[img]  # (B, L, C) float16
                    if flips is not None:
                        use = torch.rand(len(rows), generator=gen) < 0.5
                        if use.any():
                            feats = torch.where(use[:, None, None], flips[img], feats)
                            caps = torch.where(use[:, None], swap[caps], caps)
                    feats = feats.to(device).float()
                    caps = caps.to(device)
                    factor = lr_factor(step, total_steps, args.warmup_steps, args.schedule,
                                       args.min_lr_ratio)
                    for g, base in zip(opt.param_groups, base_lrs):
                        g["lr"] = base * factor
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                        enabled=amp_dtype is not None):
                        logits, alphas = decoder(feats, caps)  # (B, T-1, V), (B, T-1, L)
                    loss = caption_loss(logits.float(), caps, alphas.float(), vocab.pad_id,
                                        args.alpha_c, args.label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if args.clip > 0:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(clip_params, args.clip)
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    running.append(loss.item())
                    seen_images += len(rows)
                    now = time.time()
                    ips = seen_images / max(1e-6, now - t_rate)
                    if now - t_rate > 30:
                        seen_images, t_rate = 0, now
                    prog.update(step, float(np.mean(running[-50:])), ips, opt.param_groups[0]["lr"])
                    if args.no_progress and step % 50 == 0:
                        print(f"step {step}/{total_steps} loss {np.mean(running[-50:]):.3f} "
                              f"{ips:.0f} img/s", flush=True)
                    if args.eval_every and step % args.eval_every == 0 and bi != len(batches) - 1:
                        if do_eval(float(np.mean(running[-200:])), t_start, prog):
                            stop = True
                            break
                    if step >= total_steps:
                        stop = True
                        if bi == len(batches) - 1:
                            epoch += 1
                        break
                else:
                    epoch += 1
                if not history or history[-1]["step"] != step:
                    if do_eval(float(np.mean(running[-200:] or [float("nan")])), t_start, prog):
                        stop = True
                if epoch >= args.epochs:
                    stop = True
        result = {"step": step, "epoch": epoch, "best_dev": best, "metric": args.metric,
                  "train_seconds": round(time.time() - t_start, 1), "out": str(args.out),
                  "start_step": start_step,
                  "loss_start": float(np.mean(running[:5])) if running else None,
                  "loss_end": float(np.mean(running[-5:])) if running else None}
        if args.average_last and len(recent_states) > 1:
            avg = {k: sum(s[k].float() for s in recent_states) / len(recent_states)
                   for k in recent_states[0]}
            decoder.load_state_dict(avg)
            m, _ = evaluate_greedy(decoder, prep.dev_feats, prep.dev_refs, vocab, device, args.max_len)
            result["averaged"] = {"n": len(recent_states), **m}
            print(f"average of the last {len(recent_states)} evaluated weights: dev BLEU-4 "
                  f"{m['bleu4']:.4f} CIDEr-D {m['cider_d']:.4f} (best single {best:.4f})", flush=True)
            if m[args.metric] > best:
                best = m[args.metric]
                save_checkpoint(args.out / "best.pt", shippable(decoder), vocab, args.encoder,
                                train_info({"averaged_last": len(recent_states),
                                            **train_info_metrics(m)}), input_size=args.image_size)
                result["best_dev"] = best
        if args.export and (args.out / "best.pt").is_file():
            export_small(args.out / "best.pt", args.export)
            result["export"] = str(args.export)
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result), flush=True)
        return result
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
