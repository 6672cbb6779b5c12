"""Self-critical sequence training (training/scst.py): on a synthetic set whose best caption under
CIDEr-D is known, SCST makes the greedy caption that caption; baselines, sampling and the
projection unfold behave as documented."""

from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest
import torch

from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
from streamcap.caption.vocab import Vocab

# each image's five references are one sentence: CIDEr-D is highest (10) for exactly that one
TARGETS = ["a dog runs on the grass", "a man rides a red bike", "two girls sing", "the boy jumps"]


def tiny_set(tmp_path):
    from training.data import clean

    tokens = [[clean(t)] * 5 for t in TARGETS]
    vocab = Vocab.build((t for caps in tokens for t in caps), min_count=1)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(TARGETS), 4, 8, generator=g).numpy().astype(np.float16)  # (N, L, C)
    prep = Namespace(train_images=[f"{i}.jpg" for i in range(len(TARGETS))], dev_images=["0.jpg", "1.jpg"],
                     train_tokens=tokens, train_feats=feats, dev_feats=feats[:2], dev_refs=tokens[:2],
                     vocab=vocab, projection=None, feature_dim=8, flip_feats=None)
    return prep


def scst_args(tmp_path, **kw):
    from training.train import build_parser

    args = build_parser().parse_args(
        ["--dataset", "flickr8k", "--images", str(tmp_path), "--captions", str(tmp_path / "c.txt"),
         "--out", str(tmp_path / "run"), "--scst", "--init", str(tmp_path / "x.pt"), "--no-progress",
         "--scst-lr", "3e-3", "--scst-images", "2", "--scst-samples", "8", "--scst-epochs", "10",
         "--schedule", "constant", "--patience", "1000", "--clip", "0", "--seed", "0"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def greedy_captions(decoder, feats, vocab):
    from streamcap.caption.decode import greedy

    decoder.eval()
    out = [" ".join(vocab.decode_tokens(ids)) for ids, _ in greedy(decoder, torch.from_numpy(feats).float())]
    decoder.train()
    return out


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add synchronization
    yield
    torch.set_num_threads(old)


def cross_entropy_start(prep):
    """A decoder trained (teacher forcing) on 2 x the image's caption + 3 x the next image's:
    its greedy caption is the more frequent, wrong one, but the right one has probability ~0.4."""
    from streamcap.caption.model import caption_loss
    from training.data import clean, encode_captions

    torch.manual_seed(0)
    decoder = CaptionDecoder(CaptionModelConfig(vocab_size=len(prep.vocab), feature_dim=8, embed_dim=16,
                                                hidden_dim=32, attention_dim=16, dropout=0.0))
    mix = [[clean(TARGETS[i])] * 2 + [clean(TARGETS[(i + 1) % 4])] * 3 for i in range(len(TARGETS))]
    enc = encode_captions(mix, prep.vocab, 20)
    caps = torch.from_numpy(enc.ids)[:, :int(enc.lengths.max())]
    feats = torch.from_numpy(prep.train_feats).float()[torch.from_numpy(enc.image_index)]
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    for _ in range(100):
        logits, _ = decoder(feats, caps)
        loss = caption_loss(logits, caps, None, prep.vocab.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return decoder


def run_scst(tmp_path, baseline, **options):
    from training.metrics import CiderD
    from training.scst import train_scst
    from training.trainer import Trainer

    prep = tiny_set(tmp_path)
    decoder = cross_entropy_start(prep)
    before = greedy_captions(decoder, prep.train_feats, prep.vocab)
    args = scst_args(tmp_path, scst_baseline=baseline, **options)
    torch.manual_seed(0)
    tr = Trainer(args, prep, decoder, torch.device("cpu"), "scst", args.scst_lr, 20, 0)
    tr.steps_per_epoch = 2
    tr.scorer = CiderD(prep.train_tokens)
    result = train_scst(tr)
    return before, greedy_captions(decoder, prep.train_feats, prep.vocab), result, tr


@pytest.mark.parametrize("baseline, options", [("greedy", {}), ("mean", {}),
                                               ("mean", {"scst_dropout": "off", "scst_temperature": 0.7})])
def test_scst_makes_the_greedy_caption_the_one_cider_prefers(tmp_path, baseline, options, one_thread):
    before, after, result, tr = run_scst(tmp_path, baseline, **options)
    assert before == TARGETS[1:] + TARGETS[:1]  # cross-entropy learnt the majority caption
    assert after == TARGETS
    assert result["objective"] == "scst" and result["step"] == 20
    assert tr.history[0]["step"] == 0  # the starting weights are evaluated first
    assert tr.history[-1]["cider_d"] > tr.history[0]["cider_d"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_reward"] > rows[1]["train_reward"]


def test_sample_masks_after_end_and_never_draws_specials():
    from training.scst import sample

    torch.manual_seed(0)
    dec = CaptionDecoder(CaptionModelConfig(vocab_size=9, feature_dim=6, embed_dim=8, hidden_dim=8,
                                            attention_dim=8, dropout=0.0))
    feats = torch.randn(3, 4, 6)
    tokens, logp, mask = sample(dec, feats, k=5, max_len=4, generator=torch.Generator().manual_seed(1))
    cold, cold_logp, _ = sample(dec, feats, k=5, max_len=4, generator=torch.Generator().manual_seed(1),
                                temperature=1e-3)
    dec.eval()
    from streamcap.caption.decode import greedy
    best = [ids for ids, _ in greedy(dec, feats, max_len=4)]
    assert [row[:len(b)] for row, b in zip(cold.tolist()[::5], best)] == best  # T -> 0: the greedy caption
    assert tokens.shape[0] == 15 and tokens.shape[1] <= 5 and logp.shape == mask.shape == tokens.shape
    assert not ((tokens == Vocab.start_id) | (tokens == Vocab.unk_id)).any()
    assert (tokens[:, 0] != Vocab.end_id).all()
    for row, m in zip(tokens.tolist(), mask.tolist()):
        n = row.index(Vocab.end_id) + 1  # every row ends by max_len + 1 tokens
        assert m == [True] * n + [False] * (len(row) - n)
        assert row[n:] == [Vocab.pad_id] * (len(row) - n)
    assert logp.requires_grad and bool((logp[~mask] == 0).all())
    drawn = mask[:, :4]  # the first max_len tokens are drawn; an <end> after them is forced (p = 1)
    assert bool((logp[:, :4][drawn] < 0).all()) and bool((logp[mask] <= 0).all())


def test_baselines():
    from training.scst import advantages

    r = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])  # two images, three samples each
    assert advantages(r, 3, "greedy", np.array([2.0, 1.0])).tolist() == [-1.0, 0.0, 1.0, -1.0, -1.0, 2.0]
    assert advantages(r, 3, "mean").tolist() == [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0]


def test_unfold_inverts_fold():
    from training.project import fold, open_gate, unfold

    torch.manual_seed(0)
    small = CaptionDecoder(CaptionModelConfig(vocab_size=11, feature_dim=4, embed_dim=8, hidden_dim=8,
                                              attention_dim=8, dropout=0.0)).eval()
    open_gate(small)
    P = (np.linalg.qr(np.random.default_rng(0).normal(size=(12, 4)))[0] * 0.5).astype(np.float32)
    big = fold(small, P)
    back, residual = unfold(big, P)
    assert residual < 1e-5
    for k, v in small.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="not fixed open"):
        unfold(CaptionDecoder(CaptionModelConfig(vocab_size=11, feature_dim=12)), P)
