"""Train on low-dimensional projected features, ship a decoder for the full encoder output.

The decoder's 1280-channel inputs make every LSTM step expensive on CPU. With
``--project-dim D`` the cached features x (C channels) are projected once, x' = x @ P with
P (C, D) from the top principal directions of the training features, and a decoder with
feature_dim=D is trained with its context gate fixed at 1. Every path from the features into
that decoder is linear (init_h, init_c, the attention projection, the context into the LSTM
and into the deep output), so P folds into those weights exactly: the result is an ordinary
CaptionDecoder with feature_dim=C that gives the same outputs on unprojected features.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from streamcap.caption.model import CaptionDecoder, CaptionModelConfig

GATE_BIAS = 30.0  # sigmoid(30) == 1.0 in float32 and float16: the gate is exactly open


def fit_projection(feats: np.ndarray, dim: int, max_rows: int = 60000, seed: int = 0) -> np.ndarray:
    """P (C, dim) float32: top eigenvectors of the (uncentered) second moment of feature rows,
    scaled by one scalar so that projected features have unit mean square."""
    n, L, C = feats.shape
    rng = np.random.default_rng(seed)
    take = rng.choice(n * L, size=min(max_rows, n * L), replace=False)
    rows = feats.reshape(n * L, C)[np.sort(take)].astype(np.float64)  # (R, C)
    moment = rows.T @ rows / len(rows)  # (C, C)
    vals, vecs = np.linalg.eigh(moment)  # ascending
    P = vecs[:, ::-1][:, :dim]  # (C, dim)
    scale = 1.0 / np.sqrt(vals[::-1][:dim].sum() / dim)
    return (P * scale).astype(np.float32)


def project(feats: np.ndarray, P: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(N, L, C) float16/32 -> (N, L, D) float16, in chunks."""
    out = np.empty(feats.shape[:2] + (P.shape[1],), dtype=np.float16)
    Pt = torch.from_numpy(P)
    for s in range(0, len(feats), chunk):
        x = torch.from_numpy(np.asarray(feats[s:s + chunk], dtype=np.float32))
        out[s:s + chunk] = (x @ Pt).numpy().astype(np.float16)  # (n, L, D)
    return out


def open_gate(decoder: CaptionDecoder) -> None:
    """Fix the attention context gate at 1 (needed for the fold to be exact)."""
    if decoder.cfg.attention:
        decoder.f_beta.weight.data.zero_()
        decoder.f_beta.bias.data.fill_(GATE_BIAS)
        decoder.f_beta.requires_grad_(False)


@torch.no_grad()
def fold(decoder: CaptionDecoder, P: np.ndarray) -> CaptionDecoder:
    """A feature_dim=C decoder equal to ``decoder`` (feature_dim=D) applied to x @ P."""
    Pt = torch.from_numpy(P).to(torch.float32)  # (C, D)
    C, D = Pt.shape
    cfg = decoder.cfg
    if cfg.feature_dim != D:
        raise ValueError(f"decoder takes {cfg.feature_dim} channels, projection gives {D}")
    big_cfg = CaptionModelConfig(**{**cfg.__dict__, "feature_dim": C})
    big = CaptionDecoder(big_cfg)
    src = {k: v.detach().float().cpu() for k, v in decoder.state_dict().items()}
    dst = {}
    E = cfg.embed_dim
    for k, v in src.items():
        if k in ("init_h.weight", "init_c.weight", "enc_att.weight", "out_z.weight"):
            dst[k] = v @ Pt.T  # (out, D) @ (D, C) -> (out, C)
        elif k == "lstm.weight_ih":
            dst[k] = torch.cat([v[:, :E], v[:, E:] @ Pt.T], dim=1)  # (4H, E + C)
        elif k == "f_beta.weight":
            dst[k] = torch.zeros(C, v.shape[1])
        elif k == "f_beta.bias":
            dst[k] = torch.full((C,), GATE_BIAS)
        else:
            dst[k] = v
    big.load_state_dict(dst)
    return big.train(decoder.training)


@torch.no_grad()
def unfold(decoder: CaptionDecoder, P: np.ndarray) -> tuple[CaptionDecoder, float]:
    """The inverse of ``fold``: a feature_dim=D decoder for x @ P from a feature_dim=C one.

    Each weight W (out, C) that reads the features becomes W P (P^T P)^-1 (least squares). That
    is exact when the rows of W lie in the span of P, as they do for a decoder folded from this
    projection; the returned relative residual |W - W_D P^T| / |W| over those weights says how
    far from exact it is. The decoder's context gate must be fixed open (as ``fold`` leaves it).
    """
    from streamcap.errors import BadInputError

    Pt = torch.from_numpy(P).to(torch.float64)  # (C, D)
    C, D = Pt.shape
    cfg = decoder.cfg
    if cfg.feature_dim != C:
        raise BadInputError(f"the decoder takes {cfg.feature_dim} channels, the projection {C}")
    src = {k: v.detach().double().cpu() for k, v in decoder.state_dict().items()}
    if cfg.attention and not (bool((src["f_beta.weight"] == 0).all())
                              and bool((torch.sigmoid(src["f_beta.bias"].float()) == 1).all())):
        raise BadInputError("this decoder's context gate is not fixed open (it was not trained with "
                            "--project-dim): train it without --project-dim")
    pinv = Pt @ torch.linalg.inv(Pt.T @ Pt)  # (C, D)
    E = cfg.embed_dim
    dst, err, norm = {}, 0.0, 0.0

    def reduce(w):
        nonlocal err, norm
        small = w @ pinv  # (out, D)
        err += float(((w - small @ Pt.T) ** 2).sum())
        norm += float((w ** 2).sum())
        return small

    for k, v in src.items():
        if k in ("init_h.weight", "init_c.weight", "enc_att.weight", "out_z.weight"):
            dst[k] = reduce(v)
        elif k == "lstm.weight_ih":
            dst[k] = torch.cat([v[:, :E], reduce(v[:, E:])], dim=1)  # (4H, E + D)
        elif k == "f_beta.weight":
            dst[k] = torch.zeros(D, v.shape[1], dtype=v.dtype)
        elif k == "f_beta.bias":
            dst[k] = torch.full((D,), GATE_BIAS, dtype=v.dtype)
        else:
            dst[k] = v
    small_dec = CaptionDecoder(CaptionModelConfig(**{**cfg.__dict__, "feature_dim": D}))
    small_dec.load_state_dict({k: v.float() for k, v in dst.items()})
    return small_dec.train(decoder.training), math.sqrt(err / max(norm, 1e-30))
