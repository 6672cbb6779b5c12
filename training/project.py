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
