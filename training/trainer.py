"""The state every training objective shares, as one object instead of closures.

``Trainer`` owns the device, the prepared data, the decoder (and the fine-tuned encoder blocks),
the optimizer, learning-rate schedule and gradient scaler, the step/epoch/early-stopping counters
and the run folder: evaluation, checkpoints (``best.pt``, ``last.pt``, ``resume.pt``), metrics
(``metrics.jsonl``, ``curves.png``) and the final ``result.json``. An objective (cross-entropy
in ``training/train.py``, SCST in ``training/scst.py``) is a function that takes a Trainer, draws
batches, computes a loss, calls ``optimizer_step`` and ``evaluate``; a new objective is a new
function over the same pieces.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from streamcap.errors import BadInputError


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


def evaluate_greedy(decoder, feats: np.ndarray, refs, vocab, device, max_len: int,
                    batch: int = 250) -> tuple[dict, list[list[str]]]:
    from streamcap.caption.decode import greedy
    from training.metrics import all_metrics

    was_training = decoder.training
    decoder.eval()
    hyps = []
    for s in range(0, len(feats), batch):
        f = torch.from_numpy(np.asarray(feats[s:s + batch], dtype=np.float32)).to(device)
        hyps.extend(vocab.decode_tokens(ids) for ids, _ in greedy(decoder, f, max_len=max_len))
    decoder.train(was_training)
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
    if ckpt.get("encoder_state") is not None:
        ckpt["encoder_state"] = {k: small(v) for k, v in ckpt["encoder_state"].items()}
    ckpt["train_info"] = dict(ckpt.get("train_info") or {}, state_dict_dtype="float16")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dst)
    return dst


class Progress:
    """A rich progress bar (or plain lines with --no-progress) for the step loop."""

    def __init__(self, enabled: bool, total: int, start: int, label: str = "train"):
        self.bar = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = RP(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s  "
                                     "lr {task.fields[lr]:.2e}"),
                          TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task(label, total=total, completed=start, loss=float("nan"),
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


class Rate:
    """Samples per second over a sliding ~30 s window."""

    def __init__(self):
        self.seen, self.t0 = 0, time.time()

    def add(self, n: int) -> float:
        self.seen += n
        now = time.time()
        ips = self.seen / max(1e-6, now - self.t0)
        if now - self.t0 > 30:
            self.seen, self.t0 = 0, now
        return ips


def resolve_image_size(args) -> None:
    """--image-size defaults to the encoder's native size (224, 240 or 260)."""
    from streamcap.caption.encoder import native_size

    if getattr(args, "image_size", None) is None:
        args.image_size = native_size(args.encoder)
    if args.image_size < 32:
        raise BadInputError(f"--image-size {args.image_size}: too small (at least 32)")


class Trainer:
    """Shared training state: see the module docstring.

    ``objective`` ("xe" or "scst") is stored in ``resume.pt``; resuming a run of the other
    objective is refused. ``base_lr`` is the decoder's learning rate for this objective.
    """

    def __init__(self, args, prep, decoder, device, objective: str, base_lr: float,
                 total_steps: int, warmup_steps: int, encoder=None, projection=None, resume=None):
        from training.data import flip_swap_table

        resolve_image_size(args)

        self.args, self.prep, self.decoder, self.device = args, prep, decoder, device
        self.vocab, self.cfg = prep.vocab, decoder.cfg
        self.objective, self.encoder, self.projection = objective, encoder, projection
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.encoder_feature_dim = projection.shape[0] if projection is not None else self.cfg.feature_dim
        self._build_optimizer(base_lr)
        self.step, self.epoch, self.best, self.bad_evals = 0, 0, -1.0, 0
        self.history: list[dict] = []
        self.recent_states: list[dict] = []
        self.running: list[float] = []
        self.swap = torch.from_numpy(flip_swap_table(self.vocab))
        if resume is not None:
            self._load_resume(resume)
        self.start_step = self.step
        self.run_info = {"argv": sys.argv, "command": "python -m training.train " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]), "args": {k: str(v) for k, v in vars(args).items()
                                                             if k not in ("vocab", "projection")}}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "run.json").write_text(json.dumps(self.run_info, indent=1))
        self.metrics_path = args.out / "metrics.jsonl"
        if resume is None and self.metrics_path.exists():
            self.metrics_path.unlink()
        self.t_start = time.time()

    # -- optimizer and schedule ------------------------------------------------------------
    def _build_optimizer(self, base_lr: float) -> None:
        args = self.args
        trainable = [(n, p) for n, p in self.decoder.named_parameters() if p.requires_grad]
        decay = [p for n, p in trainable if p.dim() > 1 and "embed" not in n]
        no_decay = [p for n, p in trainable if not (p.dim() > 1 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": args.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.base_lrs = [base_lr, base_lr]
        if self.encoder is not None:  # third group: the encoder's unfrozen blocks
            from training import finetune as ft

            groups.append({"params": ft.trainable_params(self.encoder), "weight_decay": args.weight_decay})
            self.base_lrs.append(args.encoder_lr)
        self.opt = torch.optim.AdamW(groups, lr=base_lr)
        self.clip_params = [p for g in groups for p in g["params"]]
        use_cuda_amp = args.amp == "auto" and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if use_cuda_amp else (torch.bfloat16 if args.amp == "bf16" else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def set_lr(self) -> float:
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps, self.args.schedule,
                           self.args.min_lr_ratio)
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * factor
        return self.opt.param_groups[0]["lr"]

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, clip, step; counts the step and keeps the loss for the logs."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.args.clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.args.clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        self.running.append(float(loss.item()))

    def recent_loss(self, n: int = 200) -> float:
        return float(np.mean(self.running[-n:] or [float("nan")]))

    def log_step(self, prog: Progress, ips: float) -> None:
        prog.update(self.step, self.recent_loss(50), ips, self.opt.param_groups[0]["lr"])
        if self.args.no_progress and self.step % 50 == 0:
            print(f"step {self.step}/{self.total_steps} loss {self.recent_loss(50):.3f} "
                  f"{ips:.0f} img/s", flush=True)

    # -- checkpoints -----------------------------------------------------------------------
    def shippable(self):
        """The decoder to save: projection folded in, so it takes raw encoder features."""
        if self.projection is None:
            return self.decoder
        from training.project import fold

        return fold(self.decoder, self.projection)

    def train_info(self, extra=None) -> dict:
        args = self.args
        info = {"step": self.step, "epoch": self.epoch, "dataset": args.dataset, "encoder": args.encoder,
                "best_dev": self.best, "metric": args.metric, "max_len": args.max_len,
                "min_count": args.min_count, "train_images": len(self.prep.train_images),
                "dev_images": len(self.prep.dev_images), "command": self.run_info["command"],
                "trained_feature_dim": self.cfg.feature_dim, "feature_dim": self.encoder_feature_dim,
                "fine_tune_blocks": args.fine_tune_blocks, "objective": self.objective}
        info.update(getattr(self, "extra_info", {}) or {})
        info.update(extra or {})
        return info

    def encoder_state(self) -> dict | None:
        """Encoder weights to save: the one being fine-tuned, else a fine-tuned one the run
        started from and keeps frozen (SCST from such a checkpoint), else None (pretrained)."""
        if self.encoder is not None:
            return {k: v.cpu() for k, v in self.encoder.state_dict().items()}
        return getattr(self.args, "encoder_state", None)

    def save_model(self, name: str, metrics: dict | None = None, extra: dict | None = None) -> None:
        from streamcap.caption.checkpoint import save_checkpoint

        info = self.train_info({**{"dev_" + k: v for k, v in (metrics or {}).items()}, **(extra or {})})
        save_checkpoint(self.args.out / name, self.shippable(), self.vocab, self.args.encoder, info,
                        encoder_state=self.encoder_state(),
                        input_size=self.args.image_size)

    def save_resume(self) -> None:
        out = self.args.out
        torch.save({"state_dict": {k: v.cpu() for k, v in self.decoder.state_dict().items()},
                    "model_args": self.cfg.__dict__, "vocab": self.vocab.to_dict(),
                    "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                    "step": self.step, "epoch": self.epoch, "best": self.best,
                    "bad_evals": self.bad_evals, "history": self.history,
                    "torch_rng": torch.get_rng_state(), "objective": self.objective,
                    "projection": (None if self.projection is None
                                   else torch.from_numpy(self.projection)),
                    "fine_tune_blocks": self.args.fine_tune_blocks,
                    "encoder_state": self.encoder_state()},
                   out / "resume.pt.tmp")
        (out / "resume.pt.tmp").replace(out / "resume.pt")

    def _load_resume(self, resume: dict) -> None:
        self.decoder.load_state_dict(resume["state_dict"])
        self.opt.load_state_dict(resume["optimizer"])
        self.scaler.load_state_dict(resume.get("scaler", {}) or self.scaler.state_dict())
        self.step, self.epoch = int(resume["step"]), int(resume["epoch"])
        self.best, self.bad_evals = float(resume["best"]), int(resume["bad_evals"])
        self.history = list(resume.get("history", []))
        torch.set_rng_state(resume["torch_rng"])
        print(f"resumed from {self.args.resume} at step {self.step} (epoch {self.epoch}), best dev "
              f"{self.args.metric} {self.best:.4f}", flush=True)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, train_loss: float, prog: Progress, extra: dict | None = None) -> bool:
        """Evaluate on dev (greedy), log, checkpoint; True when early stopping says stop."""
        args = self.args
        m, hyps = evaluate_greedy(self.decoder, self.prep.dev_feats, self.prep.dev_refs, self.vocab,
                                  self.device, args.max_len)
        row = {"step": self.step, "epoch": self.epoch, "train_loss": train_loss,
               "lr": self.opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - self.t_start, 1),
               **(extra or {}), **m, "sample": " ".join(hyps[0])}
        self.history.append(row)
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        plot_curves(self.history, args.out / "curves.png")
        if args.average_last:
            self.recent_states.append({k: v.detach().cpu().clone()
                                       for k, v in self.decoder.state_dict().items()})
            del self.recent_states[:-args.average_last]
        improved = m[args.metric] > self.best
        if improved:
            self.best, self.bad_evals = m[args.metric], 0
            self.save_model("best.pt", m)
        else:
            self.bad_evals += 1
        self.save_model("last.pt", m)
        self.save_resume()
        prog.log(f"step {self.step} epoch {self.epoch}: loss {train_loss:.3f}  dev BLEU-4 "
                 f"{m['bleu4']:.4f} CIDEr-D {m['cider_d']:.4f}  "
                 f"{'*best*' if improved else f'({self.bad_evals} w/o gain)'}  e.g. '{row['sample']}'")
        return self.bad_evals >= args.patience

    def after_step(self, batch_i: int, n_batches: int, prog: Progress, extra: dict | None = None) -> bool:
        """What every objective does after an optimizer step: a mid-epoch evaluation when
        ``--eval-every`` says so, and the step budget. True: stop (an epoch that ended on its
        last batch is counted)."""
        every = self.args.eval_every
        if every and self.step % every == 0 and batch_i != n_batches - 1:
            if self.evaluate(self.recent_loss(), prog, extra):
                return True
        if self.step >= self.total_steps:
            if batch_i == n_batches - 1:
                self.epoch += 1
            return True
        return False

    def evaluated_now(self) -> bool:
        return bool(self.history) and self.history[-1]["step"] == self.step

    # -- the end of a run ------------------------------------------------------------------
    def finish(self, result_extra: dict | None = None) -> dict:
        """Checkpoint averaging, export, result.json; returns the result."""
        args = self.args
        result = {"step": self.step, "epoch": self.epoch, "best_dev": self.best, "metric": args.metric,
                  "train_seconds": round(time.time() - self.t_start, 1), "out": str(args.out),
                  "start_step": self.start_step, "objective": self.objective,
                  "loss_start": float(np.mean(self.running[:5])) if self.running else None,
                  "loss_end": float(np.mean(self.running[-5:])) if self.running else None,
                  **(result_extra or {})}
        if args.average_last and len(self.recent_states) > 1:
            states = self.recent_states
            avg = {k: sum(s[k].float() for s in states) / len(states) for k in states[0]}
            self.decoder.load_state_dict(avg)
            m, _ = evaluate_greedy(self.decoder, self.prep.dev_feats, self.prep.dev_refs, self.vocab,
                                   self.device, args.max_len)
            result["averaged"] = {"n": len(states), **m}
            print(f"average of the last {len(states)} evaluated weights: dev BLEU-4 "
                  f"{m['bleu4']:.4f} CIDEr-D {m['cider_d']:.4f} (best single {self.best:.4f})", flush=True)
            if m[args.metric] > self.best:
                self.best = m[args.metric]
                self.save_model("best.pt", m, {"averaged_last": len(states)})
                result["best_dev"] = self.best
        if args.export and (args.out / "best.pt").is_file():
            export_small(args.out / "best.pt", args.export)
            result["export"] = str(args.export)
        (args.out / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result), flush=True)
        return result
