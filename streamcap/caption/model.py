"""LSTM caption decoder with soft attention (Show, Attend and Tell) or plain Show-and-Tell.

Shapes: B batch, C feature channels, L = h*w feature locations, T caption length,
E embed_dim, H hidden_dim, A attention_dim, V vocab size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CaptionModelConfig:
    vocab_size: int
    feature_dim: int
    embed_dim: int = 256
    hidden_dim: int = 512
    attention_dim: int = 256
    dropout: float = 0.3
    attention: bool = True


class DecoderState(NamedTuple):
    """Everything one decoding step needs; every field has batch first (reorderable)."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    feats: torch.Tensor  # (B, L, C)
    feats_proj: torch.Tensor  # (B, L, A) encoder side of the attention, computed once
    mean: torch.Tensor  # (B, C)

    def select(self, index: torch.Tensor) -> "DecoderState":
        """Rows ``index`` of every field (beam search reordering / expansion)."""
        return DecoderState(*(t.index_select(0, index) for t in self))


def flatten_features(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, L, C); (B, L, C) passes through."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)  # (B, C, L) -> (B, L, C)
    if features.dim() != 3:
        raise ValueError(f"features must be (B, C, h, w) or (B, L, C), got {tuple(features.shape)}")
    return features


class CaptionDecoder(nn.Module):
    def __init__(self, cfg: CaptionModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, E, H, A, V = cfg.feature_dim, cfg.embed_dim, cfg.hidden_dim, cfg.attention_dim, cfg.vocab_size
        self.embed = nn.Embedding(V, E, padding_idx=0)
        self.init_h = nn.Linear(C, H)
        self.init_c = nn.Linear(C, H)
        if cfg.attention:
            self.enc_att = nn.Linear(C, A)
            self.dec_att = nn.Linear(H, A)
            self.full_att = nn.Linear(A, 1)
            self.f_beta = nn.Linear(H, C)  # gating scalar per channel, as in SAT section 4.2.1
        self.lstm = nn.LSTMCell(E + C, H)
        # Deep output: p(y_t) ~ exp(L_o(E y_{t-1} + L_h h_t + L_z z_t))
        self.out_h = nn.Linear(H, E)
        self.out_z = nn.Linear(C, E, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(E, V)
        self.fc.bias.data.zero_()
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    # -- state ---------------------------------------------------------------------------
    def init_state(self, features: torch.Tensor) -> DecoderState:
        feats = flatten_features(features)  # (B, L, C)
        mean = feats.mean(dim=1)  # (B, C)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # (B, H) each
        if self.cfg.attention:
            proj = self.enc_att(feats)  # (B, L, A)
        else:
            proj = feats.new_zeros(feats.shape[0], feats.shape[1], 1)  # (B, L, 1) unused
        return DecoderState(h, c, feats, proj, mean)

    def _attend(self, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """(context z (B, C), alpha (B, L))."""
        if not self.cfg.attention:
            return state.mean, state.feats.new_zeros(state.feats.shape[:2])
        e = self.full_att(torch.tanh(state.feats_proj + self.dec_att(state.h).unsqueeze(1)))  # (B, L, 1)
        alpha = torch.softmax(e.squeeze(2), dim=1)  # (B, L)
        z = (state.feats * alpha.unsqueeze(2)).sum(dim=1)  # (B, C)
        z = torch.sigmoid(self.f_beta(state.h)) * z  # gated context (B, C)
        return z, alpha

    def _step(self, tokens: torch.Tensor, state: DecoderState):
        emb = self.embed(tokens)  # (B,) -> (B, E)
        z, alpha = self._attend(state)  # (B, C), (B, L)
        h, c = self.lstm(torch.cat([emb, z], dim=1), (state.h, state.c))  # (B, H) each
        deep = emb + self.out_h(h) + self.out_z(z)  # (B, E)
        logits = self.fc(self.dropout(torch.tanh(deep)))  # (B, V)
        return logits, alpha, state._replace(h=h, c=c)

    def step(self, tokens: torch.Tensor, state: DecoderState):
        """One decoding step: tokens (B,) -> (log_probs (B, V), alpha (B, L), new state)."""
        logits, alpha, state = self._step(tokens, state)
        return F.log_softmax(logits, dim=-1), alpha, state

    # -- teacher forcing -----------------------------------------------------------------
    def forward(self, features: torch.Tensor, captions: torch.Tensor):
        """features (B, C, h, w) | (B, L, C); captions (B, T) starting with <start>.

        Returns logits (B, T-1, V) predicting captions[:, 1:], alphas (B, T-1, L).
        """
        state = self.init_state(features)
        logits, alphas = [], []
        for t in range(captions.shape[1] - 1):
            step_logits, alpha, state = self._step(captions[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        if not logits:
            raise ValueError("captions need at least two tokens (<start> and one more)")
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)  # (B, T-1, V), (B, T-1, L)


def attention_regularization(alphas: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Doubly stochastic penalty ((1 - sum_t alpha_t)^2).mean() over locations.

    alphas (B, T-1, L); mask (B, T-1) true where the target token is real (not <pad>).
    """
    if mask is not None:
        alphas = alphas * mask.unsqueeze(2).to(alphas.dtype)  # (B, T-1, L)
    return ((1.0 - alphas.sum(dim=1)) ** 2).mean()  # (B, L) -> scalar


def caption_loss(logits: torch.Tensor, captions: torch.Tensor, alphas: torch.Tensor | None = None,
                 pad_id: int = 0, alpha_c: float = 1.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on captions[:, 1:] ignoring <pad>, plus alpha_c * attention regularization."""
    targets = captions[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing)
    if alphas is not None and alpha_c > 0 and alphas.abs().sum() > 0:
        loss = loss + alpha_c * attention_regularization(alphas, targets != pad_id)
    return loss
