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
    problem = _sniff(path)
    if problem:
        raise BadInputError(f"caption checkpoint {path} {problem}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickled modules
        raise BadInputError(f"caption checkpoint {path} {_load_failure(err)}") from None
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


# The first bytes of files people pass by mistake, and what to call them.
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF file (AVI video, WAV audio or WebP image)"), (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"))


def _sniff(path: Path) -> str | None:
    """What is wrong with ``path`` as a torch.save file (a zip archive, or the legacy pickle
    format), told from its bytes before torch reads it; None when it may be one."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if not head:
        return "is empty"
    if head.startswith(b"PK\x03\x04"):  # torch >= 1.6 writes a zip archive
        return None if zipfile.is_zipfile(path) else "is corrupt: the zip archive is truncated (no end record)"
    if head[:1] == b"\x80":  # the legacy pickle format
        return None
    if head[4:8] == b"ftyp":
        kind = "an MP4/MOV video or image (ISO media)"
    else:
        kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
        if kind is None:
            printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
            kind = "a text file" if printable else f"binary data starting {head[:4].hex(' ')}"
    return f"is not a PyTorch checkpoint: it is {kind}, not the zip archive torch.save writes"


def _load_failure(err: Exception) -> str:
    """torch.load's error in a few words (its messages run to paragraphs)."""
    text = str(err)
    if "Weights only load failed" in text:
        if "Unsupported global" in text or "GLOBAL" in text:
            return "holds pickled Python objects, not plain tensors (refused: loading them could run code)"
        return "is not a PyTorch checkpoint (torch could not unpickle it)"
    if isinstance(err, EOFError) or "failed finding central directory" in text or "not a ZIP archive" in text:
        return "is corrupt: the zip archive is truncated or damaged"
    if "PytorchStreamReader" in text or "inline_container" in text:
        return "is corrupt: a zip archive torch.save did not write, or a damaged one"
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    return f"is corrupt: torch.load failed ({type(err).__name__}{': ' + first if first else ''})"
