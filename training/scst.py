"""Self-critical sequence training (Rennie et al., "Self-critical Sequence Training for Image
Captioning", CVPR 2017) on cached features.

For each training image K captions are sampled from the decoder (``sample``); each earns the
CIDEr-D of the image's training references as its reward (document frequencies from all
training references); the baseline is the reward of the greedy caption of the same image
(``--scst-baseline greedy``, as in the paper) or the mean reward of the image's other K-1
samples (``mean``). The loss is the REINFORCE estimate
``-(reward - baseline) * log p(sample)``, averaged over the sampled tokens (``<end>`` included).

    python -m training.train <data arguments as for cross-entropy> --scst --init best.pt \\
        --out runs/NAME_scst [--scst-epochs 10 --scst-lr 5e-5 --scst-images 50 --scst-samples 5]

``--init`` takes any caption checkpoint of the same encoder (a run's ``best.pt`` or the bundled
fp16 file); its vocabulary and model size are used, the model flags are ignored. With
``--project-dim D`` a full-width checkpoint trained with the projection (gate fixed open) is
unfolded onto the D principal directions (``training/project.py``: ``unfold``), trained there,
and folded back when saved. ``--resume RUN`` continues an SCST run (same flags and --scst).
Dev evaluation is greedy CIDEr-D as in cross-entropy training; the first evaluation (step 0)
scores the --init weights, so ``best.pt`` is never worse on dev than the starting point.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from streamcap.caption.vocab import Vocab
from streamcap.errors import BadInputError
from training.trainer import Progress, Rate, Trainer, pick_device

_NEG_INF = float("-inf")


def validate_scst(args) -> None:
    if args.init is None and args.resume is None:
        raise BadInputError("--scst needs --init CKPT (a trained caption checkpoint) or --resume RUN")
    if args.init is not None and args.resume is not None:
        raise BadInputError("--init and --resume exclude each other (--resume continues an SCST run)")
    if args.fine_tune_blocks > 0:
        raise BadInputError("--scst runs on cached features: it cannot be combined with --fine-tune-blocks")
    if args.flip_aug:
        raise BadInputError("--scst cannot be combined with --flip-aug")
    for flag, value, low in (("--scst-epochs", args.scst_epochs, 1), ("--scst-images", args.scst_images, 1),
                             ("--scst-samples", args.scst_samples, 1), ("--scst-max-len", args.scst_max_len, 1)):
        if value < low:
            raise BadInputError(f"{flag} must be at least {low} (got {value})")
    if not args.scst_temperature > 0:
        raise BadInputError(f"--scst-temperature must be positive (got {args.scst_temperature})")
    if not args.scst_lr > 0:
        raise BadInputError(f"--scst-lr must be positive (got {args.scst_lr})")
    if args.scst_baseline == "mean" and args.scst_samples < 2:
        raise BadInputError("--scst-baseline mean needs --scst-samples 2 or more")


def sample(decoder, feats: torch.Tensor, k: int, max_len: int, generator: torch.Generator | None = None,
           temperature: float = 1.0):
    """K captions per image drawn from the decoder, with gradients.

    feats (B, L, C) -> tokens (B*K, T) (image b's samples are rows b*K .. b*K+K-1; after <end>
    rows hold <pad>), logp (B*K, T) log-probability of each drawn token under the distribution it
    was drawn from, mask (B*K, T) true for
    drawn tokens up to and including <end>. <pad>, <start> and <unk> are never drawn, nor <end>
    as the first word.
    """
    state = decoder.init_state(feats)
    B = state.h.shape[0]
    state = state.select(torch.arange(B, device=feats.device).repeat_interleave(k))  # (B*K, ...)
    R = B * k
    tokens = torch.full((R,), Vocab.start_id, dtype=torch.long, device=feats.device)
    alive = torch.ones(R, dtype=torch.bool, device=feats.device)
    out_tok, out_logp, out_mask = [], [], []
    for t in range(max_len + 1):  # max_len words, then <end> is forced
        log_probs, _, state = decoder.step(tokens, state)  # (R, V)
        banned = torch.zeros(log_probs.shape[1], dtype=torch.bool, device=feats.device)
        banned[[Vocab.pad_id, Vocab.start_id, Vocab.unk_id]] = True
        if t == 0:
            banned[Vocab.end_id] = True
        if t == max_len:
            banned[:] = True
            banned[Vocab.end_id] = False
        scaled = log_probs if temperature == 1.0 else log_probs / temperature
        masked = scaled.masked_fill(banned, _NEG_INF).log_softmax(dim=-1)  # renormalized over allowed
        with torch.no_grad():
            draw = torch.multinomial(masked.float().exp(), 1, generator=generator).squeeze(1)  # (R,)
        draw = torch.where(alive, draw, torch.full_like(draw, Vocab.pad_id))
        out_tok.append(draw)
        out_logp.append(masked.gather(1, draw.clamp(min=0).unsqueeze(1)).squeeze(1).masked_fill(~alive, 0.0))
        out_mask.append(alive)
        alive = alive & (draw != Vocab.end_id)
        tokens = draw
        if not bool(alive.any()):
            break
    return torch.stack(out_tok, 1), torch.stack(out_logp, 1), torch.stack(out_mask, 1)


def rewards(scorer, image_index: list[int], token_rows: list[list[int]], vocab: Vocab) -> np.ndarray:
    """CIDEr-D of each caption (token ids) against the training references of its image."""
    return np.array([scorer.score_one(vocab.decode_tokens(ids), i)
                     for i, ids in zip(image_index, token_rows)], dtype=np.float64)


def advantages(sample_r: np.ndarray, k: int, baseline: str, greedy_r: np.ndarray | None = None) -> np.ndarray:
    """(B*K,) rewards -> reward minus baseline (greedy reward of the image, or the mean of the
    image's other samples)."""
    r = sample_r.reshape(-1, k)  # (B, K)
    if baseline == "greedy":
        return (r - greedy_r[:, None]).reshape(-1)
    others = (r.sum(axis=1, keepdims=True) - r) / (k - 1)
    return (r - others).reshape(-1)


def policy_loss(logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """-(advantage * log p) averaged over the sampled tokens."""
    m = mask.to(logp.dtype)
    return -(adv.unsqueeze(1) * logp * m).sum() / m.sum().clamp(min=1.0)


def load_init(args):
    """The --init checkpoint's decoder and vocabulary (refused if the encoder differs)."""
    from streamcap.caption.checkpoint import load_checkpoint

    ck = load_checkpoint(args.init)
    if ck.encoder_name != args.encoder:
        raise BadInputError(f"--init {args.init} was trained on {ck.encoder_name} features; "
                            f"pass --encoder {ck.encoder_name}")
    # a fine-tuned encoder stays frozen here: its features are cached (keyed on a hash of its
    # weights) and its weights are carried into every checkpoint SCST writes
    args.encoder_state = ck.encoder_state
    if ck.input_size != args.image_size:
        raise BadInputError(f"--init {args.init} was trained on {ck.input_size}px images; "
                            f"pass --image-size {ck.input_size}")
    return ck


def setup_scst(args, resume) -> Trainer:
    from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
    from training.metrics import CiderD
    from training.train import Prepared, seed_everything

    device = pick_device(args.device)
    init = None
    if resume is None:
        init = load_init(args)
        args.vocab = init.vocab
    seed_everything(args.seed)
    prep = Prepared(args, log=lambda m: print(m, flush=True))
    extra = {}
    if resume is not None:
        decoder = CaptionDecoder(CaptionModelConfig(**resume["model_args"]))
    elif prep.projection is not None:
        from training.project import unfold

        decoder, residual = unfold(init.decoder, prep.projection)
        print(f"--init unfolded onto {prep.projection.shape[1]} principal directions "
              f"(relative residual {residual:.2e})", flush=True)
        extra["unfold_residual"] = residual
    else:
        decoder = init.decoder
        if decoder.cfg.feature_dim != prep.feature_dim:
            raise BadInputError(f"--init {args.init} takes {decoder.cfg.feature_dim} channels; the "
                                f"features have {prep.feature_dim}")
    decoder = decoder.to(device).train()
    if prep.projection is not None:
        from training.project import open_gate

        open_gate(decoder)
    steps_per_epoch = math.ceil(len(prep.train_images) / args.scst_images)
    total = steps_per_epoch * args.scst_epochs
    if args.max_steps:
        total = min(total, args.max_steps)
    tr = Trainer(args, prep, decoder, device, "scst", args.scst_lr, total, 0,
                 projection=prep.projection, resume=resume)
    tr.steps_per_epoch = steps_per_epoch
    tr.scorer = CiderD(prep.train_tokens)  # document frequencies of the training references
    tr.extra_info = {"scst": {"init": str(args.init) if args.init else None, "lr": args.scst_lr,
                              "samples": args.scst_samples, "baseline": args.scst_baseline,
                              "images_per_step": args.scst_images, **extra}}
    return tr


def scst_step(tr: Trainer, image_rows: np.ndarray, feats_all: torch.Tensor,
              gen: torch.Generator) -> tuple[float, float, float]:
    """One update on a batch of training images: (loss, mean sample reward, mean greedy reward)."""
    from streamcap.caption.decode import greedy

    args, k = tr.args, tr.args.scst_samples
    feats = feats_all[torch.from_numpy(image_rows)].to(tr.device).float()  # (B, L, C)
    index = image_rows.tolist()
    greedy_r = None
    if args.scst_baseline == "greedy":
        tr.decoder.eval()
        g = greedy(tr.decoder, feats, max_len=args.scst_max_len)
        tr.decoder.train()
        greedy_r = rewards(tr.scorer, index, [ids for ids, _ in g], tr.vocab)
    if args.scst_dropout == "off":
        tr.decoder.eval()  # gradients still flow; only dropout is off
    with tr.autocast():
        tokens, logp, mask = sample(tr.decoder, feats, k, args.scst_max_len, gen, args.scst_temperature)
    tr.decoder.train()
    rows = [row[row > Vocab.pad_id].tolist() for row in tokens.cpu()]
    sample_r = rewards(tr.scorer, [i for i in index for _ in range(k)], rows, tr.vocab)
    adv = torch.from_numpy(advantages(sample_r, k, args.scst_baseline, greedy_r)).to(tr.device, torch.float32)
    tr.set_lr()
    tr.optimizer_step(policy_loss(logp.float(), mask, adv))
    return (tr.running[-1], float(sample_r.mean()),
            float(greedy_r.mean()) if greedy_r is not None else float("nan"))


def train_scst(tr: Trainer) -> dict:
    args = tr.args
    n = len(tr.prep.train_images)
    feats_all = torch.from_numpy(tr.prep.train_feats)  # (N, L, C) float16
    gen = torch.Generator(device=tr.device).manual_seed(args.seed * 1000 + 7 + tr.step)
    rate = Rate()
    sample_r: list[float] = []
    greedy_r: list[float] = []

    def extra():
        greedy_known = [g for g in greedy_r[-50:] if g == g]  # nan with the mean baseline
        return {"train_reward": float(np.mean(sample_r[-50:])) if sample_r else None,
                "train_greedy_reward": float(np.mean(greedy_known)) if greedy_known else None}

    stop = tr.step >= tr.total_steps
    with Progress(not args.no_progress, tr.total_steps, tr.step, label="scst") as prog:
        if not tr.history:  # step 0: the --init weights on dev
            tr.evaluate(float("nan"), prog)
        while not stop:
            perm = np.random.default_rng([args.seed, 7, tr.epoch]).permutation(n)
            batches = [perm[s:s + args.scst_images] for s in range(0, n, args.scst_images)]
            skip = tr.step - tr.epoch * tr.steps_per_epoch
            for bi, rows in enumerate(batches):
                if bi < skip:
                    continue
                _, r, g = scst_step(tr, rows, feats_all, gen)
                sample_r.append(r)
                greedy_r.append(g)
                tr.log_step(prog, rate.add(len(rows)))
                if args.no_progress and tr.step % 10 == 0:
                    greedy_part = ("" if args.scst_baseline != "greedy" else
                                   f", greedy {np.mean(greedy_r[-10:]):.3f}")
                    print(f"step {tr.step}/{tr.total_steps}: train CIDEr-D of samples "
                          f"{np.mean(sample_r[-10:]):.3f}{greedy_part}; "
                          f"{time.time() - tr.t_start:.0f} s", flush=True)
                if tr.after_step(bi, len(batches), prog, extra()):
                    stop = True
                    break
            else:
                tr.epoch += 1
            if not tr.evaluated_now() and tr.evaluate(tr.recent_loss(), prog, extra()):
                stop = True
            if tr.epoch >= args.scst_epochs:
                stop = True
    return tr.finish(extra())
