"""Vocab, encoders, decoder, decoding and checkpoints: small random models, offline."""

from __future__ import annotations

import pytest
import torch
from conftest import MEDIA

from streamcap.caption.checkpoint import load_checkpoint, save_checkpoint
from streamcap.caption.decode import beam_search, greedy
from streamcap.caption.encoder import build_encoder, preprocess
from streamcap.caption.model import (CaptionDecoder, CaptionModelConfig, attention_regularization,
                                     caption_loss)
from streamcap.caption.vocab import Vocab, tokenize
from streamcap.errors import BadInputError

torch.set_num_threads(1)


def tiny_decoder(vocab_size=12, feature_dim=16, attention=True, seed=0) -> CaptionDecoder:
    torch.manual_seed(seed)
    cfg = CaptionModelConfig(vocab_size=vocab_size, feature_dim=feature_dim, embed_dim=8,
                             hidden_dim=12, attention_dim=6, dropout=0.0, attention=attention)
    return CaptionDecoder(cfg).eval()


# -- vocab -------------------------------------------------------------------------------
def test_tokenize_lowercases_and_keeps_alphanumeric_words():
    assert tokenize("A dog's ball, isn't it? Black-and-white 3 kids.") == [
        "a", "dog", "ball", "is", "not", "it", "black", "and", "white", "3", "kids"]


def test_vocab_build_encode_decode_round_trip():
    vocab = Vocab.build([["a", "dog", "runs"]] * 5 + [["a", "cat"]], min_count=5)
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.itos[4:] == ["a", "dog", "runs"] and len(vocab) == 7
    ids = vocab.encode(["a", "cat", "runs"])
    assert ids == [1, 4, 3, 6, 2]
    assert vocab.encode(["a"], add_special=False) == [4]
    assert vocab.decode(ids) == "a <unk> runs"
    assert vocab.decode([1, 5, 0, 2, 4]) == "dog"  # stops at <end>, skips specials
    again = Vocab.from_dict(vocab.to_dict())
    assert again.itos == vocab.itos and again.stoi == vocab.stoi


# -- encoders ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,channels", [("efficientnet_lite0", 1280), ("resnet50", 2048)])
def test_random_encoders_give_7x7_maps_and_are_frozen(name, channels):
    enc = build_encoder(name, pretrained=False)
    assert (enc.name, enc.out_channels, enc.input_size) == (name, channels, 224)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    with torch.inference_mode():
        feats = enc(torch.rand(1, 3, 224, 224))
    assert feats.shape == (1, channels, 7, 7)
    assert enc.pooled(feats).shape == (1, channels)
    enc.unfreeze_last(1)
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(enc.parameters()))


def test_real_lite0_weights_load_offline_and_separate_images():
    import numpy as np
    from PIL import Image

    enc = build_encoder("efficientnet_lite0", pretrained=True)
    images = [Image.open(MEDIA / f"{n}.jpg") for n in ("dog", "horses")]
    batch = preprocess(images + [np.asarray(images[0].convert("RGB"))])
    assert batch.shape == (3, 3, 224, 224) and 0.0 <= batch.min() and batch.max() <= 1.0
    with torch.inference_mode():
        pooled = enc.pooled(enc(batch))
    assert torch.allclose(pooled[0], pooled[2], atol=1e-5)  # PIL and array paths agree
    cos = torch.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert cos < 0.95  # different photos, different features


def test_unknown_encoder_name_is_bad_input():
    with pytest.raises(BadInputError, match="unknown image encoder"):
        build_encoder("vgg")


# -- decoder -----------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [True, False])
def test_decoder_shapes_and_loss(attention):
    dec = tiny_decoder(attention=attention).train()
    captions = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    for feats in (torch.rand(2, 16, 3, 3), torch.rand(2, 9, 16)):
        logits, alphas = dec(feats, captions)
        assert logits.shape == (2, 4, 12) and alphas.shape == (2, 4, 9)
    if attention:
        assert torch.allclose(alphas.sum(-1), torch.ones(2, 4))
    else:
        assert alphas.abs().sum() == 0
    loss = caption_loss(logits, captions, alphas)
    loss.backward()
    assert torch.isfinite(loss) and dec.fc.weight.grad is not None
    reg = attention_regularization(alphas, captions[:, 1:] != 0)
    assert reg.ndim == 0 and reg >= 0


def test_step_api_matches_teacher_forcing():
    dec = tiny_decoder()
    feats, captions = torch.rand(2, 16, 3, 3), torch.tensor([[1, 4, 5], [1, 6, 7]])
    with torch.inference_mode():
        logits, alphas = dec(feats, captions)
        state = dec.init_state(feats)
        for t in range(2):
            log_probs, alpha, state = dec.step(captions[:, t], state)
            assert torch.allclose(log_probs, logits[:, t].log_softmax(-1), atol=1e-6)
            assert torch.allclose(alpha, alphas[:, t], atol=1e-6)


# -- decoding ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy(seed):
    dec = tiny_decoder(vocab_size=30, seed=seed)
    feats = torch.randn(4, 16, 3, 3) * 3
    for g, b in zip(greedy(dec, feats, max_len=10), beam_search(dec, feats, beam=1, max_len=10)):
        assert len(b) == 1
        assert g[0] == b[0][0] and g[1] == pytest.approx(b[0][1], abs=1e-5)


def test_beams_sorted_best_first_and_not_worse_than_greedy():
    dec = tiny_decoder(vocab_size=30, seed=3)
    feats = torch.randn(3, 16, 3, 3) * 3
    beams = beam_search(dec, feats, beam=4, max_len=8, length_penalty=1.0, return_alphas=True)
    greedy_out = greedy(dec, feats, max_len=8, length_penalty=1.0)
    for hyps, g in zip(beams, greedy_out):
        scores = [h[1] for h in hyps]
        assert 1 <= len(hyps) <= 4 and scores == sorted(scores, reverse=True)
        assert all(0 < len(h[0]) <= 8 and h[2].shape == (len(h[0]), 9) for h in hyps)
        assert all(t not in (0, 1, 2, 3) for h in hyps for t in h[0])  # no specials
        assert scores[0] >= g[1] - 1e-6


def test_ngram_blocking_removes_repeats():
    dec = tiny_decoder(vocab_size=30, seed=0)
    for hyps in beam_search(dec, torch.randn(3, 16, 3, 3) * 3, beam=2, max_len=10, block_repeat_ngram=1):
        for tokens, _ in hyps:
            assert len(tokens) == len(set(tokens))


# -- checkpoints -------------------------------------------------------------------------
def tiny_vocab(n=12):
    return Vocab([f"w{i}" for i in range(n - 4)])


def test_checkpoint_round_trip(tmp_path):
    dec = tiny_decoder()
    path = save_checkpoint(tmp_path / "m.pt", dec, tiny_vocab(), "efficientnet_lite0",
                           train_info={"epochs": 2, "bleu4": 0.2})
    loaded = load_checkpoint(path)
    assert loaded.encoder_name == "efficientnet_lite0" and loaded.input_size == 224
    assert loaded.train_info == {"epochs": 2, "bleu4": 0.2} and loaded.encoder_state is None
    assert loaded.vocab.itos == tiny_vocab().itos and not loaded.decoder.training
    for k, v in dec.state_dict().items():
        assert torch.equal(v, loaded.decoder.state_dict()[k])


def _corrupt(tmp_path, mutate):
    path = save_checkpoint(tmp_path / "m.pt", tiny_decoder(), tiny_vocab(), "efficientnet_lite0")
    ckpt = torch.load(path, weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c.update(format_version=0), "format_version 0"),
    (lambda c: c.pop("state_dict"), "missing state_dict"),
    (lambda c: c["model_args"].update(hidden_dim=99), "does not match"),
    (lambda c: c["model_args"].update(bogus=1), "does not match"),
    (lambda c: c["vocab"]["itos"].pop(), "does not match"),
])
def test_bad_checkpoints_are_bad_input(tmp_path, mutate, match):
    path = _corrupt(tmp_path, mutate)
    with pytest.raises(BadInputError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_missing_and_pickled_checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(BadInputError, match="is not a PyTorch checkpoint: it is binary data"):
        load_checkpoint(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="is empty"):
        load_checkpoint(empty)
    good = save_checkpoint(tmp_path / "m.pt", tiny_decoder(), tiny_vocab(), "efficientnet_lite0")
    truncated = tmp_path / "trunc.pt"
    for cut in (200, good.stat().st_size // 2, good.stat().st_size - 10):
        truncated.write_bytes(good.read_bytes()[:cut])
        with pytest.raises(BadInputError, match="corrupt: the zip archive is truncated"):
            load_checkpoint(truncated)
    with pytest.raises(BadInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    pickled = tmp_path / "module.pt"
    torch.save({"format_version": 1, "model": tiny_decoder()}, pickled)  # a whole module: refused
    with pytest.raises(BadInputError, match="pickled Python objects"):
        load_checkpoint(pickled)


def test_checkpoint_keeps_a_fine_tuned_encoder(tmp_path):
    enc = build_encoder("efficientnet_lite0", pretrained=False)
    with torch.no_grad():
        enc.body._conv_head.weight.mul_(0.5)  # "fine-tuned"
    dec = tiny_decoder(feature_dim=1280)
    path = save_checkpoint(tmp_path / "ft.pt", dec, tiny_vocab(), "efficientnet_lite0", encoder_state=enc)
    rebuilt = load_checkpoint(path).build_encoder()
    assert not rebuilt.training and not any(p.requires_grad for p in rebuilt.parameters())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])
