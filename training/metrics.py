"""Caption metrics: corpus BLEU-1..4 (NLTK) and CIDEr-D written from its definition.

CIDEr-D (Vedantam, Zitnick, Parikh, "CIDEr: Consensus-based Image Description Evaluation",
CVPR 2015, and the coco-caption reference code): for n = 1..4 every sentence becomes a
TF-IDF vector of its n-grams, with the document frequency of an n-gram counted over the
images of the reference set (an image counts once however many of its references hold it)
and idf = log(N_images / max(1, df)). A candidate's score against one reference is the
clipped cosine  sum_g min(c_g, r_g) * r_g / (|c| |r|)  times the Gaussian length penalty
exp(-(len_c - len_r)^2 / (2 * 6^2)); it is averaged over n = 1..4 and over the references,
then multiplied by 10; the corpus score is the mean over images.
All sentences are token lists, tokenized the same way as in training.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Iterable, Sequence

Tokens = Sequence[str]

CIDER_SIGMA = 6.0
CIDER_N = 4


def ngrams(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """Corpus BLEU-1..4 with all references (NLTK ``corpus_bleu``, no smoothing)."""
    from nltk.translate.bleu_score import corpus_bleu

    refs = [[list(r) for r in rs] for rs in references]
    hyps = [list(c) for c in candidates]
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    with warnings.catch_warnings():  # zero n-gram overlaps are a valid score of 0 here
        warnings.simplefilter("ignore")
        scores = corpus_bleu(refs, hyps, weights=weights)
    return {f"bleu{i + 1}": float(s) for i, s in enumerate(scores)}


class CiderD:
    """CIDEr-D with document frequencies from a fixed reference set.

    ``CiderD(references)`` builds the document frequencies; ``score(candidates)`` then returns
    (corpus score, per-image scores) for one candidate per image, in the same order.
    """

    def __init__(self, references: Sequence[Sequence[Tokens]], sigma: float = CIDER_SIGMA):
        self.sigma = sigma
        self.references = [[list(r) for r in rs] for rs in references]
        self.df: Counter = Counter()
        for refs in self.references:
            seen = set()
            for ref in refs:
                for n in range(1, CIDER_N + 1):
                    seen.update(ngrams(ref, n))
            self.df.update(seen)
        self.log_n = math.log(float(max(1, len(self.references))))
        self._ref_vecs = [[self.vector(r) for r in refs] for refs in self.references]

    def vector(self, tokens: Tokens):
        """Per n: ({ngram: tf*idf}, norm), and the sentence length."""
        vecs = []
        for n in range(1, CIDER_N + 1):
            vec = {g: tf * (self.log_n - math.log(max(1.0, self.df[g])))
                   for g, tf in ngrams(tokens, n).items()}
            norm = math.sqrt(sum(v * v for v in vec.values()))
            vecs.append((vec, norm))
        return vecs, len(tokens)

    def similarity(self, hyp, ref) -> float:
        """Mean over n of the clipped, length-penalized cosine (not yet x10)."""
        (hvecs, hlen), (rvecs, rlen) = hyp, ref
        penalty = math.exp(-((hlen - rlen) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for (hv, hn), (rv, rn) in zip(hvecs, rvecs):
            if hn == 0 or rn == 0:
                continue
            dot = 0.0
            for g, h in hv.items():
                r = rv.get(g)
                if r is not None:
                    dot += min(h, r) * r
            total += dot / (hn * rn) * penalty
        return total / CIDER_N

    def score_one(self, candidate: Tokens, index: int) -> float:
        hyp = self.vector(candidate)
        refs = self._ref_vecs[index]
        return 10.0 * sum(self.similarity(hyp, r) for r in refs) / max(1, len(refs))

    def score(self, candidates: Sequence[Tokens]) -> tuple[float, list[float]]:
        if len(candidates) != len(self.references):
            raise ValueError(f"{len(candidates)} candidates for {len(self.references)} images")
        per_image = [self.score_one(c, i) for i, c in enumerate(candidates)]
        return (sum(per_image) / max(1, len(per_image))), per_image

    def score_constant(self, candidate: Tokens) -> float:
        """Corpus score of one caption used for every image (vector computed once)."""
        hyp = self.vector(candidate)
        total = 0.0
        for refs in self._ref_vecs:
            total += 10.0 * sum(self.similarity(hyp, r) for r in refs) / max(1, len(refs))
        return total / max(1, len(self._ref_vecs))


def cider_d(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Corpus CIDEr-D of one candidate per image against its references."""
    return CiderD(references).score(candidates)[0]


def all_metrics(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict:
    out = bleu(candidates, references)
    out["cider_d"] = cider_d(candidates, references)
    return out


def flatten(items: Iterable[Iterable]) -> list:
    return [x for it in items for x in it]
