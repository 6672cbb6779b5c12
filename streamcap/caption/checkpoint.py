"""Caption checkpoints: plain dicts of tensors and primitives, loaded with weights_only=True.

{format_version: 1, model_args: asdict(cfg), state_dict, vocab: vocab.to_dict(),
 encoder: {"name", "input_size"}, train_info: {...}, encoder_state: state_dict | None}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamcap.caption.model import CaptionDecoder, CaptionModelConfig
from streamcap.caption.vocab import Vocab
from streamcap.errors import BadInputError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_args", "state_dict", "vocab", "encoder")


@dataclass
class LoadedCaptioner:
    decoder: CaptionDecoder  # in eval mode
    vocab: Vocab
    encoder_name: str
    input_size: int = 224
    train_info: dict[str, Any] = field(default_factory=dict)
    encoder_state: dict[str, torch.Tensor] | None = None

    def build_encoder(self):
        """The image encoder this decoder was trained with (fine-tuned weights if saved)."""
        from streamcap.caption.encoder import build_encoder

        encoder = build_encoder(self.encoder_name, pretrained=self.encoder_state is None)
        if self.encoder_state is not None:
            encoder.load_state_dict(self.encoder_state)
        return encoder.freeze()


def _cpu_state(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def save_checkpoint(path, decoder: CaptionDecoder, vocab: Vocab, encoder_name: str,
                    train_info: dict | None = None, encoder_state=None, input_size: int = 224) -> Path:
    """Write atomically (temp file + rename). ``encoder_state`` only for a fine-tuned encoder."""
    path = Path(path)
    if len(vocab) != decoder.cfg.vocab_size:
        raise ValueError(f"vocab has {len(vocab)} words but the decoder expects {decoder.cfg.vocab_size}")
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_args": asdict(decoder.cfg),
        "state_dict": _cpu_state(decoder),
        "vocab": vocab.to_dict(),
        "encoder": {"name": encoder_name, "input_size": int(input_size)},
        # JSON round trip keeps train_info loadable with weights_only=True
        "train_info": json.loads(json.dumps(train_info or {}, default=str)),
        "encoder_state": None if encoder_state is None else _cpu_state(encoder_state),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, map_location="cpu") -> LoadedCaptioner:
    """Rebuild the decoder and vocab; any problem is a one-line BadInputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"caption checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, random bytes, pickled modules
        text = str(err)
        if "Weights only load failed" in text:
            # torch's paragraph about weights_only; what matters is the reason it gives last.
            reason = "it holds pickled Python objects, not plain tensors" if "Unsupported global" in text \
                else "not a PyTorch checkpoint (or a truncated one)"
        else:
            reason = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
        raise BadInputError(f"caption checkpoint {path} is unreadable or corrupt: {reason}") from None
    if not isinstance(ckpt, dict):
        raise BadInputError(f"caption checkpoint {path} is not a streamcap checkpoint (not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise BadInputError(f"caption checkpoint {path} is missing {', '.join(missing)}")
    version = ckpt["format_version"]
    if version != FORMAT_VERSION:
        raise BadInputError(
            f"caption checkpoint {path} has format_version {version!r}; this streamcap reads {FORMAT_VERSION}")
    try:
        cfg = CaptionModelConfig(**ckpt["model_args"])
        vocab = Vocab.from_dict(ckpt["vocab"])
        encoder = ckpt["encoder"]
        encoder_name, input_size = str(encoder["name"]), int(encoder.get("input_size", 224))
        if len(vocab) != cfg.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} words, model_args say {cfg.vocab_size}")
        decoder = CaptionDecoder(cfg)
        decoder.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputError(f"caption checkpoint {path} does not match this model: {msg[:200]}") from None
    return LoadedCaptioner(decoder=decoder.eval(), vocab=vocab, encoder_name=encoder_name,
                           input_size=input_size, train_info=dict(ckpt.get("train_info") or {}),
                           encoder_state=ckpt.get("encoder_state"))
