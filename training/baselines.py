"""Baselines a caption model must beat: the best constant caption, nearest-neighbour retrieval.

- Constant: one training caption used for every evaluated image; the candidates (frequent
  and 'central' training captions) are scored on the evaluated split and the best is kept,
  so this is an upper bound for any constant caption.
- Nearest neighbour (Devlin et al. 2015, "Exploring Nearest Neighbor Approaches for Image
  Captioning"): the k training images closest in the encoder's pooled-feature space (cosine);
  among their captions, the consensus caption, the one with the highest mean CIDEr-D
  similarity (idf from the training captions) to the other candidates.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from training.metrics import CiderD, bleu, ngrams

Tokens = list[str]


def constant_candidates(train_refs: Sequence[Sequence[Tokens]], n_candidates: int = 200) -> list[Tokens]:
    """Frequent exact captions plus captions whose n-grams are most common in training."""
    exact = Counter(tuple(c) for refs in train_refs for c in refs)
    df: Counter = Counter()
    for refs in train_refs:
        seen = set()
        for c in refs:
            for n in (1, 2):
                seen.update(ngrams(c, n))
        df.update(seen)

    def centrality(c: tuple) -> float:
        grams = set(ngrams(c, 1)) | set(ngrams(c, 2))
        return sum(np.log1p(df[g]) for g in grams) / (len(grams) + 4.0)

    half = max(1, n_candidates // 2)
    frequent = [c for c, _ in exact.most_common(half)]
    central = sorted((c for c in exact if 5 <= len(c) <= 14), key=centrality, reverse=True)
    out, seen = [], set()
    for c in frequent + central:
        if c not in seen:
            seen.add(c)
            out.append(list(c))
        if len(out) >= n_candidates:
            break
    return out


def best_constant(candidates: Sequence[Tokens], eval_refs: Sequence[Sequence[Tokens]],
                  cider: CiderD | None = None, bleu_top: int = 30) -> dict:
    """The candidate with the highest corpus CIDEr-D, and the one with the highest BLEU-4."""
    cider = cider or CiderD(eval_refs)
    scored = sorted(((cider.score_constant(c), c) for c in candidates), key=lambda t: -t[0])
    best_c, best = scored[0][1], {"caption": " ".join(scored[0][1]), "cider_d": scored[0][0]}
    best.update(bleu([best_c] * len(eval_refs), eval_refs))
    # BLEU-4 best among the top CIDEr-D candidates and the shorter frequent ones
    pool = [c for _, c in scored[:bleu_top]]
    by_bleu = max(((bleu([c] * len(eval_refs), eval_refs)["bleu4"], c) for c in pool),
                  key=lambda t: t[0])
    return {
        "by_cider_d": best,
        "by_bleu4": {"caption": " ".join(by_bleu[1]), "bleu4": by_bleu[0],
                     "cider_d": cider.score_constant(by_bleu[1])},
        "n_candidates": len(candidates),
    }


def nearest_neighbour(train_feats: np.ndarray, train_refs: Sequence[Sequence[Tokens]],
                      eval_feats: np.ndarray, k: int = 5,
                      train_cider: CiderD | None = None) -> list[Tokens]:
    """Consensus caption of the k nearest training images, for each evaluated image."""
    cider = train_cider or CiderD(train_refs)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    a, b = unit(eval_feats), unit(train_feats)
    vec_cache: dict[tuple[int, int], object] = {}
    out: list[Tokens] = []
    for s in range(0, len(a), 256):
        sims = a[s:s + 256] @ b.T  # (chunk, N_train)
        nearest = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
        for row, idx in enumerate(nearest):
            idx = idx[np.argsort(-sims[row, idx])]
            cands = [(int(i), j) for i in idx for j in range(len(train_refs[int(i)]))]
            vecs = []
            for key in cands:
                if key not in vec_cache:
                    vec_cache[key] = cider.vector(train_refs[key[0]][key[1]])
                vecs.append(vec_cache[key])
            best, best_score = 0, -1.0
            for ci, v in enumerate(vecs):
                score = sum(cider.similarity(v, w) for cj, w in enumerate(vecs) if cj != ci)
                if score > best_score:
                    best, best_score = ci, score
            i, j = cands[best]
            out.append(list(train_refs[i][j]))
    return out
