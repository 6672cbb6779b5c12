"""Captioner: checkpoint -> captions for image files, arrays and pipeline frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamcap.caption.checkpoint import load_checkpoint
from streamcap.caption.decode import DEFAULT_LENGTH_PENALTY, beam_search, greedy
from streamcap.caption.encoder import preprocess
from streamcap.errors import BadInputError

BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "caption_flickr8k_lite0.pt"


@dataclass
class CaptionResult:
    text: str
    score: float  # length-normalized log-probability (<= 0; higher is more confident)
    tokens: list[str]
    alphas: np.ndarray | None = None  # (n_words, h, w) attention per word, attention models only


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInputError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def resolve_checkpoint(model: str | Path | None) -> Path:
    if model is not None:
        return Path(model)
    if not BUNDLED_CHECKPOINT.is_file():
        raise BadInputError(
            f"the bundled caption model {BUNDLED_CHECKPOINT.name} is not installed yet "
            f"(expected at {BUNDLED_CHECKPOINT}); pass a caption checkpoint with --model FILE")
    return BUNDLED_CHECKPOINT


def read_image_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); BadInputError when missing or unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # phone photos upright
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BadInputError(f"cannot read image {path}: {type(err).__name__}: {str(err)[:120]}") from None


class Captioner:
    """Encoder + decoder from one checkpoint; ``captioner(frame)`` is a pipeline CaptionStage.

    ``feature_ema``: alpha in (0, 1]; frames are captioned from an exponential moving average
    of encoder features (steadier text on video); the average restarts when the scene changes
    hard (cosine similarity of pooled features below ``ema_reset_below``).
    """

    name = "caption"

    def __init__(self, model: str | Path | None = None, device: str | torch.device | None = "auto",
                 beam: int = 3, max_len: int = 20, length_penalty: float = DEFAULT_LENGTH_PENALTY,
                 block_repeat_ngram: int = 3, feature_ema: float | None = None,
                 ema_reset_below: float = 0.8) -> None:
        self.checkpoint_path = resolve_checkpoint(model)
        self.device = resolve_device(device)
        loaded = load_checkpoint(self.checkpoint_path, map_location="cpu")
        self.vocab = loaded.vocab
        self.train_info = loaded.train_info
        self.input_size = loaded.input_size
        self.encoder = loaded.build_encoder().to(self.device)
        self.decoder = loaded.decoder.to(self.device).eval()
        if loaded.decoder.cfg.feature_dim != self.encoder.out_channels:
            raise BadInputError(
                f"caption checkpoint {self.checkpoint_path} expects {loaded.decoder.cfg.feature_dim}-channel "
                f"features but encoder {loaded.encoder_name} gives {self.encoder.out_channels}")
        self.beam, self.max_len = beam, max_len
        self.length_penalty, self.block_repeat_ngram = length_penalty, block_repeat_ngram
        if feature_ema is not None and not 0 < feature_ema <= 1:
            raise BadInputError(f"feature_ema must be in (0, 1], got {feature_ema}")
        self.feature_ema, self.ema_reset_below = feature_ema, ema_reset_below
        self._ema: dict[str, torch.Tensor] = {}  # per frame.source
        self.ema_resets = 0

    @property
    def attention(self) -> bool:
        return self.decoder.cfg.attention

    def reset(self, source: str | None = None) -> None:
        """Forget the feature average of one source (all when None), e.g. after a seek."""
        if source is None:
            self._ema.clear()
        else:
            self._ema.pop(source, None)

    @torch.inference_mode()
    def encode(self, images_rgb: Sequence) -> torch.Tensor:
        """RGB uint8 arrays / PIL images -> features (B, C, h, w) on the model's device."""
        batch = preprocess(images_rgb, self.input_size).to(self.device)  # (B, 3, S, S)
        return self.encoder(batch)  # (B, C, h, w)

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, return_alphas: bool = False) -> list[CaptionResult]:
        if self.beam <= 1 and self.block_repeat_ngram <= 0:
            best = greedy(self.decoder, features, self.max_len, self.length_penalty,
                          return_alphas=return_alphas)
        else:
            best = [hyps[0] for hyps in beam_search(
                self.decoder, features, self.beam, self.max_len, self.length_penalty,
                self.block_repeat_ngram, return_alphas=return_alphas)]
        hw = features.shape[2:] if features.dim() == 4 else None
        out = []
        for hyp in best:
            ids, score = hyp[0], float(hyp[1])
            alphas = None
            if return_alphas and self.attention and hw is not None and len(ids):
                alphas = hyp[2].reshape(len(ids), *hw).cpu().numpy()  # (n_words, h, w)
            words = self.vocab.decode_tokens(ids)
            out.append(CaptionResult(" ".join(words), score, words, alphas))
        return out

    def caption_images(self, images: Sequence, batch_size: int = 8,
                       return_alphas: bool = False) -> list[CaptionResult]:
        """Paths, RGB uint8 arrays or PIL images -> one CaptionResult each, in order."""
        results: list[CaptionResult] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = [read_image_rgb(x) if isinstance(x, (str, Path)) else x
                     for x in images[start:start + batch_size]]
            results.extend(self.decode(self.encode(chunk), return_alphas=return_alphas))
        return results

    @torch.inference_mode()
    def __call__(self, frame) -> tuple[str, float]:
        """CaptionStage: a streamcap Frame (BGR uint8) -> (raw caption text, score)."""
        rgb = np.ascontiguousarray(frame.image[:, :, ::-1])  # BGR -> RGB
        feats = self.encode([rgb])  # (1, C, h, w)
        if self.feature_ema is not None:
            feats = self._smooth_features(str(frame.source), feats)
        result = self.decode(feats)[0]
        return result.text, result.score

    def _smooth_features(self, source: str, feats: torch.Tensor) -> torch.Tensor:
        ema = self._ema.get(source)
        if ema is not None and ema.shape == feats.shape:
            sim = torch.cosine_similarity(feats.mean(dim=(2, 3)), ema.mean(dim=(2, 3))).item()  # (1,)
            if sim >= self.ema_reset_below:
                ema = self.feature_ema * feats + (1 - self.feature_ema) * ema  # (1, C, h, w)
                self._ema[source] = ema
                return ema
            self.ema_resets += 1  # hard change: restart from this frame
        self._ema[source] = feats.clone()
        return self._ema[source]


_DEFAULT: dict[str, Captioner] = {}


def caption_image(image_or_path, model: str | Path | None = None, beam: int = 3) -> tuple[str, float]:
    """One image (path, RGB uint8 array or PIL image) -> (caption, score); caches the model."""
    key = f"{model}|{beam}"
    if key not in _DEFAULT:
        _DEFAULT[key] = Captioner(model=model, beam=beam)
    result = _DEFAULT[key].caption_images([image_or_path], batch_size=1)[0]
    return result.text, result.score
