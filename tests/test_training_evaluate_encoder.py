"""`training.evaluate` scores a checkpoint with the encoder it was trained with: a fine-tuned
checkpoint's own ``encoder_state``, never the pretrained encoder of the same name, even when a
feature cache of the pretrained encoder for the same images is already there."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from streamcap.caption.checkpoint import save_checkpoint
from streamcap.caption.encoder import build_encoder, preprocess
from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
from streamcap.caption.vocab import Vocab

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("dog.jpg", "horses.jpg", "messi5.jpg")


@pytest.fixture
def data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in PHOTOS:
        shutil.copy(REPO / "samples" / name, images / name)
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\ndog.jpg,a dog with a bicycle\nhorses.jpg,horses in a field\n"
                        "messi5.jpg,a man plays football\n", encoding="utf-8")
    return images, captions


def _checkpoints(tmp_path) -> tuple[Path, Path, dict]:
    """The same decoder saved twice: with the pretrained encoder, and with one whose last block
    was changed (as --fine-tune-blocks 1 would)."""
    torch.manual_seed(0)
    vocab = Vocab(["a", "dog", "with", "bicycle", "horses", "in", "field", "man", "plays", "football"])
    decoder = CaptionDecoder(CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=8,
                                                hidden_dim=8, attention_dim=8, dropout=0.0))
    encoder = build_encoder("efficientnet_lite0")
    with torch.no_grad():
        encoder.body._conv_head.weight.mul_(-1.0)  # the last block, "fine-tuned"
    state = encoder.state_dict()
    plain = save_checkpoint(tmp_path / "plain.pt", decoder, vocab, "efficientnet_lite0")
    tuned = save_checkpoint(tmp_path / "tuned.pt", decoder, vocab, "efficientnet_lite0", encoder_state=state)
    return plain, tuned, state


def _features(encoder, images: Path, names) -> np.ndarray:
    from training.features import _load_rgb

    with torch.inference_mode():
        f = encoder(preprocess([_load_rgb(images / n) for n in names]))  # (B, C, h, w)
    return f.flatten(2).transpose(1, 2).numpy()  # (B, L, C)


def test_feature_cache_keys_on_the_encoder_weights(tmp_path, data):
    from training.features import build_cache, weights_tag

    images, _ = data
    _, _, state = _checkpoints(tmp_path)
    names = list(PHOTOS)
    pre = build_cache(names, images, tmp_path / "cache", progress=False)
    tuned = build_cache(names, images, tmp_path / "cache", progress=False, encoder_state=state)
    assert tuned.meta["weights"] == weights_tag(state) != "pretrained" == pre.meta["weights"]
    assert len(list((tmp_path / "cache").glob("*.f16"))) == 2  # neither reused the other
    encoder = build_encoder("efficientnet_lite0", pretrained=False)
    encoder.load_state_dict(state)
    want_tuned = _features(encoder.eval(), images, names)
    want_pre = _features(build_encoder("efficientnet_lite0"), images, names)
    got_tuned, got_pre = tuned.rows(names).astype(np.float32), pre.rows(names).astype(np.float32)
    assert np.allclose(got_tuned, want_tuned, atol=2e-2, rtol=1e-2)
    assert np.allclose(got_pre, want_pre, atol=2e-2, rtol=1e-2)
    assert not np.allclose(got_tuned, got_pre, atol=2e-2, rtol=1e-2)
    # and the pretrained cache is found again as before (the same key as without the option)
    again = build_cache(names, images, tmp_path / "cache", progress=False, encoder_state=None)
    assert again.meta["weights"] == "pretrained" and len(list((tmp_path / "cache").glob("*.f16"))) == 2


def test_evaluate_decodes_the_fine_tuned_encoders_features(tmp_path, data, monkeypatch):
    import training.evaluate as ev
    from training.features import weights_tag

    images, captions = data
    plain, tuned, state = _checkpoints(tmp_path)
    seen: list[np.ndarray] = []
    real_decode_all = ev.decode_all

    def spy(decoder, feats, *args, **kw):
        seen.append(np.asarray(feats, dtype=np.float32).copy())
        return real_decode_all(decoder, feats, *args, **kw)

    monkeypatch.setattr(ev, "decode_all", spy)
    common = ["--images", str(images), "--captions", str(captions), "--dataset", "csv", "--beam", "2",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    # The pretrained encoder's cache for these very images exists first: it must not be used.
    first = ev.evaluate(ev.build_parser().parse_args(["--model", str(plain), *common]))
    assert first["encoder_weights"] == "pretrained"
    pretrained_feats = seen[-1]
    seen.clear()
    result = ev.evaluate(ev.build_parser().parse_args(["--model", str(tuned), *common]))
    assert result["encoder_weights"] == weights_tag(state)
    encoder = build_encoder("efficientnet_lite0", pretrained=False)
    encoder.load_state_dict(state)
    want = _features(encoder.eval(), images, list(PHOTOS))  # no split: every captioned image, in file order
    assert len(seen) == 2 and all(f.shape == want.shape for f in seen)  # greedy and beam 2
    for feats in seen:
        assert np.allclose(feats, want, atol=2e-2, rtol=1e-2)
        assert not np.allclose(feats, pretrained_feats, atol=2e-2, rtol=1e-2)
