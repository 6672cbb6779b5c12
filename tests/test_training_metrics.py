"""BLEU and CIDEr-D on hand-made cases with known answers; baselines; the projection fold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.baselines import best_constant, nearest_neighbour
from training.metrics import CiderD, bleu, cider_d


def toks(s: str) -> list[str]:
    return s.split()


def test_bleu_identical_candidate_and_references_is_one():
    refs = [[toks("a dog runs on the green grass")], [toks("two children play in the park")]]
    hyps = [toks("a dog runs on the green grass"), toks("two children play in the park")]
    scores = bleu(hyps, refs)
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0)


def test_bleu_hand_computed_unigram_and_brevity():
    # candidate "a dog" vs reference "a dog runs": p1 = 1, brevity penalty exp(1 - 3/2)
    scores = bleu([toks("a dog")], [[toks("a dog runs")]])
    assert scores["bleu1"] == pytest.approx(math.exp(1 - 3 / 2))
    assert scores["bleu4"] == pytest.approx(0.0, abs=1e-12)


def test_cider_d_identical_with_unique_ngrams_is_ten():
    refs = [[toks("a dog runs fast")], [toks("two cats sleep here")]]
    assert cider_d([toks("a dog runs fast"), toks("two cats sleep here")], refs) == pytest.approx(10.0)
    # a 3-word sentence has no 4-grams: that n contributes 0, as in coco-caption -> 7.5
    short = [[toks("a dog runs")], [toks("two cats sleep")]]
    assert cider_d([toks("a dog runs"), toks("two cats sleep")], short) == pytest.approx(7.5)


def test_cider_d_hand_computed_case():
    # Two images, one reference each: "a dog runs" and "a cat sleeps"; N = 2 images.
    # Image 1 candidate = its reference: cos 1 for n = 1..3, no 4-grams (0) -> 10 * 3/4 = 7.5.
    # Image 2 candidate "a cat": idf(a) = log(2/2) = 0, every other n-gram has idf log 2.
    #   n=1: c = {a:0, cat:l}, r = {a:0, cat:l, sleeps:l}: cos = l*l / (l * sqrt2 l) = 1/sqrt2
    #   n=2: c = {a cat: l}, r = {a cat: l, cat sleeps: l}: 1/sqrt2;  n=3, n=4: candidate empty -> 0
    #   length penalty exp(-(2-3)^2 / (2*36));  score = 10 * (2/sqrt2)/4 * penalty
    image2 = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    refs = [[toks("a dog runs")], [toks("a cat sleeps")]]
    got = CiderD(refs).score([toks("a dog runs"), toks("a cat")])
    assert got[1][0] == pytest.approx(7.5)
    assert got[1][1] == pytest.approx(image2)
    assert got[0] == pytest.approx((7.5 + image2) / 2)


def test_cider_d_clips_repeated_ngrams():
    refs = [[toks("a dog runs")], [toks("the cat sleeps")]]
    scorer = CiderD(refs)
    once = scorer.score_one(toks("dog runs"), 0)
    repeated = scorer.score_one(toks("dog dog dog runs"), 0)
    assert repeated < once  # repetition is clipped (and penalised for length), not rewarded


def test_constant_and_nearest_neighbour_baselines():
    train_refs = [[toks("a dog runs on grass"), toks("a dog runs")],
                  [toks("a man rides a bike"), toks("a man on a bike")],
                  [toks("a dog plays on grass"), toks("a brown dog runs")]]
    eval_refs = [[toks("a dog runs on the grass")], [toks("a man rides a red bike")]]
    const = best_constant([toks("a dog runs"), toks("a man rides a bike")], eval_refs)
    assert const["by_cider_d"]["caption"] in ("a dog runs", "a man rides a bike")
    train_feats = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=np.float32)
    eval_feats = np.array([[1.0, 0.05], [0.05, 1.0]], dtype=np.float32)
    nn = nearest_neighbour(train_feats, train_refs, eval_feats, k=1)
    assert " ".join(nn[1]) in ("a man rides a bike", "a man on a bike")
    nn2 = nearest_neighbour(train_feats, train_refs, eval_feats, k=2)
    assert nn2[0][:2] == ["a", "dog"]  # consensus among the two dog images' captions


def test_projection_folds_exactly_into_a_full_width_decoder():
    from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
    from training.project import fit_projection, fold, open_gate

    torch.manual_seed(0)
    feats = np.abs(np.random.default_rng(0).normal(size=(20, 9, 48))).astype(np.float16)
    P = fit_projection(feats, 8)
    small = CaptionDecoder(CaptionModelConfig(vocab_size=30, feature_dim=8, embed_dim=16,
                                              hidden_dim=32, attention_dim=16)).eval()
    open_gate(small)
    big = fold(small, P).eval()
    assert big.cfg.feature_dim == 48
    x = torch.from_numpy(feats[:3].astype(np.float32))  # (3, 9, 48)
    caps = torch.randint(4, 30, (3, 6))
    a, _ = small(x @ torch.from_numpy(P), caps)
    b, _ = big(x, caps)
    assert torch.allclose(a, b, atol=1e-4)
