"""Greedy and beam-search decoding, batched over images.

Scores are length-normalized log-probabilities: sum(log p) / n ** length_penalty, where n
counts generated tokens including <end>. Token ids returned exclude <start> and <end>.
With ``return_alphas=True`` each result is (token_ids, score, alphas (n_words, L) tensor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from streamcap.caption.model import CaptionDecoder
from streamcap.caption.vocab import Vocab

DEFAULT_LENGTH_PENALTY = 0.7
_NEG_INF = float("-inf")


def _normalize(logp_sum: float, n: int, length_penalty: float) -> float:
    return logp_sum / max(n, 1) ** length_penalty


def _mask_specials(log_probs: torch.Tensor, t: int, min_len: int) -> None:
    log_probs[:, Vocab.pad_id] = _NEG_INF
    log_probs[:, Vocab.start_id] = _NEG_INF
    log_probs[:, Vocab.unk_id] = _NEG_INF  # never show "<unk>"
    if t < min_len:
        log_probs[:, Vocab.end_id] = _NEG_INF


def _result(tokens, score, alphas, return_alphas):
    if not return_alphas:
        return (tokens, score)
    return (tokens, score, torch.stack(alphas[: len(tokens)]) if tokens else torch.zeros(0, 0))


@torch.inference_mode()
def greedy(decoder: CaptionDecoder, features: torch.Tensor, max_len: int = 20,
           length_penalty: float = DEFAULT_LENGTH_PENALTY, min_len: int = 1,
           return_alphas: bool = False) -> list[tuple]:
    """Most likely token at each step; one (token_ids, score) per image."""
    state = decoder.init_state(features)
    B = state.h.shape[0]
    tokens = torch.full((B,), Vocab.start_id, dtype=torch.long, device=state.h.device)  # (B,)
    seqs: list[list[int]] = [[] for _ in range(B)]
    alphas: list[list[torch.Tensor]] = [[] for _ in range(B)]
    logp = [0.0] * B
    length = [0] * B
    done = [False] * B
    for t in range(max_len):
        log_probs, alpha, state = decoder.step(tokens, state)  # (B, V), (B, L)
        _mask_specials(log_probs, t, min_len)
        best_lp, tokens = log_probs.max(dim=1)  # (B,), (B,)
        for b, (tok, lp) in enumerate(zip(tokens.tolist(), best_lp.tolist())):
            if done[b]:
                continue
            logp[b] += lp
            length[b] += 1
            if tok == Vocab.end_id:
                done[b] = True
            else:
                seqs[b].append(tok)
                alphas[b].append(alpha[b].cpu())
        if all(done):
            break
    return [_result(seqs[b], _normalize(logp[b], length[b], length_penalty), alphas[b], return_alphas)
            for b in range(B)]


@dataclass
class _Hyp:
    tokens: list[int] = field(default_factory=list)
    logp: float = 0.0  # what ranks hypotheses: the model's log-probability plus any guide's bias
    alphas: list[torch.Tensor] = field(default_factory=list)
    model_logp: float = 0.0  # the model's own log-probability (the reported score)


def _banned(tokens: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``tokens``."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    prefix = tuple(tokens[len(tokens) - n + 1:]) if n > 1 else ()
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


@torch.inference_mode()
def beam_search(decoder: CaptionDecoder, features: torch.Tensor, beam: int = 3, max_len: int = 20,
                length_penalty: float = DEFAULT_LENGTH_PENALTY, block_repeat_ngram: int = 0,
                min_len: int = 1, return_alphas: bool = False,
                guides: list | None = None) -> list[list[tuple]]:
    """Up to ``beam`` hypotheses per image, best normalized score first.

    An <end> among the top ``beam`` candidates of a step finishes that hypothesis; an image
    stops when it has ``beam`` finished ones (so beam=1 is exactly greedy).
    ``guides``: one ``ObjectGuide`` (or None) per image; its bias is added to the
    log-probabilities that rank the hypotheses, while scores stay the model's own.
    """
    k = max(1, int(beam))
    state = decoder.init_state(features)
    B, device = state.h.shape[0], state.h.device
    hyps = [_Hyp() for _ in range(B)]  # one per state row
    owner = list(range(B))  # image of each state row
    tokens = torch.full((B,), Vocab.start_id, dtype=torch.long, device=device)  # (R,)
    finished: list[list[tuple[float, _Hyp, int, float]]] = [[] for _ in range(B)]
    guided = guides is not None and any(g is not None for g in guides)
    for t in range(max_len):
        log_probs, alpha, state = decoder.step(tokens, state)  # (R, V), (R, L)
        _mask_specials(log_probs, t, min_len)
        if block_repeat_ngram > 0:
            for r, hyp in enumerate(hyps):
                banned = _banned(hyp.tokens, block_repeat_ngram)
                if banned:
                    log_probs[r, list(banned)] = _NEG_INF
        V = log_probs.shape[1]
        model_lp = log_probs
        if guided:
            bias = torch.stack([guides[b].bias([h.tokens])[0] if guides[b] is not None
                                else log_probs.new_zeros(V) for h, b in zip(hyps, owner)])  # (R, V)
            log_probs = log_probs + bias.to(device)
        cand = log_probs + torch.tensor([h.logp for h in hyps], device=device).unsqueeze(1)  # (R, V)
        alpha_cpu = alpha.cpu()
        rows_by_image: dict[int, list[int]] = {}
        for r, b in enumerate(owner):
            rows_by_image.setdefault(b, []).append(r)
        new_rows, new_tokens, new_hyps, new_owner = [], [], [], []
        for b, rows in rows_by_image.items():
            flat = cand[rows].flatten()  # (len(rows) * V,)
            top_s, top_i = flat.topk(min(2 * k, flat.numel()))
            n_active = 0
            for rank, (s, i) in enumerate(zip(top_s.tolist(), top_i.tolist())):
                if s == _NEG_INF:
                    break
                r, tok = rows[i // V], i % V
                parent = hyps[r]
                model = parent.model_logp + float(model_lp[r, tok]) if guided else s
                if tok == Vocab.end_id:
                    if rank < k:
                        n = len(parent.tokens) + 1
                        finished[b].append((_normalize(s, n, length_penalty), parent, n, model))
                    continue
                if n_active < k:
                    new_rows.append(r)
                    new_tokens.append(tok)
                    new_owner.append(b)
                    new_hyps.append(_Hyp(parent.tokens + [tok], s, parent.alphas + [alpha_cpu[r]], model))
                    n_active += 1
            if len(finished[b]) >= k:  # this image is done: drop its active rows
                keep = [j for j, o in enumerate(new_owner) if o != b]
                new_rows, new_tokens, new_owner, new_hyps = ([x[j] for j in keep] for x in
                                                             (new_rows, new_tokens, new_owner, new_hyps))
        if not new_rows:
            hyps, owner = [], []
            break
        index = torch.tensor(new_rows, dtype=torch.long, device=device)
        state = state.select(index)  # (R', ...)
        tokens = torch.tensor(new_tokens, dtype=torch.long, device=device)  # (R',)
        hyps, owner = new_hyps, new_owner
    for hyp, b in zip(hyps, owner):  # ran out of max_len: unterminated hypotheses count too
        n = len(hyp.tokens)
        finished[b].append((_normalize(hyp.logp, n, length_penalty), hyp, n, hyp.model_logp))
    out = []
    for b in range(B):
        ranked = sorted(finished[b], key=lambda f: f[0], reverse=True)[:k]
        out.append([_result(h.tokens, _normalize(model, n, length_penalty), h.alphas, return_alphas)
                    for _, h, n, model in ranked])
    return out
