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
from streamcap.caption.guidance import DEFAULT_BONUS, DEFAULT_PENALTY, ObjectGuide
from streamcap.caption.smoothing import WordVectors
from streamcap.caption.vocab import SPECIALS
from streamcap.errors import BadInputError

DEFAULT_WINDOW = 3  # frames pooled per video caption
DEFAULT_CUT_BELOW = 0.6  # cosine of pooled features below which two frames show different scenes
# (measured: frames of one street scene 2 s apart >= 0.79; different photos and scenes <= 0.41)
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "caption_flickr8k_lite0.pt"


@dataclass
class CaptionResult:
    text: str
    score: float  # length-normalized log-probability (<= 0; higher is more confident)
    tokens: list[str]
    alphas: np.ndarray | None = None  # (n_words, h, w) attention per word, attention models only
    scene_change: bool = False  # window captions: the pixels changed scene since the last caption
    picture: np.ndarray | None = None  # window captions: unit vector of the pooled features (C,)


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

    ``window``: video captions (``caption_window``) pool the encoder features of up to this
    many frames sampled since the previous caption (the newest included); frames whose pooled
    features differ from the newest one's (cosine below ``cut_below``) are left out, and such a
    difference from the previous caption's frame marks a scene change.
    ``bonus``/``penalty``: how strongly detected objects guide the words (``ObjectGuide``).
    """

    name = "caption"

    def __init__(self, model: str | Path | None = None, device: str | torch.device | None = "auto",
                 beam: int = 3, max_len: int = 20, length_penalty: float = DEFAULT_LENGTH_PENALTY,
                 block_repeat_ngram: int = 3, feature_ema: float | None = None,
                 ema_reset_below: float = 0.8, window: int = DEFAULT_WINDOW,
                 cut_below: float = DEFAULT_CUT_BELOW, bonus: float = DEFAULT_BONUS,
                 penalty: float = DEFAULT_PENALTY) -> None:
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
        if window < 1:
            raise BadInputError(f"window must be at least 1, got {window}")
        self.window, self.cut_below = window, cut_below
        self.bonus, self.penalty = bonus, penalty
        self._last_pooled: dict[str, torch.Tensor] = {}  # per source: the last caption's newest frame
        self._vectors = None

    @property
    def attention(self) -> bool:
        return self.decoder.cfg.attention

    def reset(self, source: str | None = None) -> None:
        """Forget the feature average of one source (all when None), e.g. after a seek."""
        if source is None:
            self._ema.clear()
            self._last_pooled.clear()
        else:
            self._ema.pop(source, None)
            self._last_pooled.pop(source, None)

    def guide(self, labels) -> ObjectGuide | None:
        """The decoding guide for one image's object labels; None for None or no labels."""
        if not labels:
            return None
        return ObjectGuide(labels, self.vocab.stoi, len(self.vocab), self.bonus, self.penalty)

    def word_vectors(self) -> WordVectors:
        """Caption similarity by meaning from the decoder's output word embeddings."""
        if self._vectors is None:
            w = torch.nn.functional.normalize(self.decoder.fc.weight.detach().float().cpu(), dim=1)
            rows = w.numpy()
            self._vectors = WordVectors({word: rows[i] for i, word in enumerate(self.vocab.itos)
                                         if i >= len(SPECIALS)})
        return self._vectors

    @torch.inference_mode()
    def encode(self, images_rgb: Sequence) -> torch.Tensor:
        """RGB uint8 arrays / PIL images -> features (B, C, h, w) on the model's device."""
        batch = preprocess(images_rgb, self.input_size).to(self.device)  # (B, 3, S, S)
        return self.encoder(batch)  # (B, C, h, w)

    @torch.inference_mode()
    def decode(self, features: torch.Tensor, return_alphas: bool = False,
               objects: Sequence | None = None) -> list[CaptionResult]:
        """``objects``: per image, a list of detected labels (or None) that guides the words."""
        guides = [self.guide(labels) for labels in objects] if objects is not None else None
        if guides is not None and not any(g is not None for g in guides):
            guides = None
        if self.beam <= 1 and self.block_repeat_ngram <= 0 and guides is None:
            best = greedy(self.decoder, features, self.max_len, self.length_penalty,
                          return_alphas=return_alphas)
        else:
            best = [hyps[0] for hyps in beam_search(
                self.decoder, features, self.beam, self.max_len, self.length_penalty,
                self.block_repeat_ngram, return_alphas=return_alphas, guides=guides)]
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

    def caption_images(self, images: Sequence, batch_size: int = 8, return_alphas: bool = False,
                       objects: Sequence | None = None) -> list[CaptionResult]:
        """Paths, RGB uint8 arrays or PIL images -> one CaptionResult each, in order.
        ``objects``: one list of detected labels (or None) per image."""
        results: list[CaptionResult] = []
        for start in range(0, len(images), max(1, batch_size)):
            chunk = [read_image_rgb(x) if isinstance(x, (str, Path)) else x
                     for x in images[start:start + batch_size]]
            labels = None if objects is None else objects[start:start + batch_size]
            results.extend(self.decode(self.encode(chunk), return_alphas=return_alphas, objects=labels))
        return results

    def thumbnail(self, frame) -> np.ndarray:
        """A frame (BGR uint8) as the encoder's RGB input (size x size, squashed as ``preprocess``
        does): small enough to keep a few per source for ``caption_window``."""
        import cv2

        h, w = frame.image.shape[:2]
        size = self.input_size
        rgb = np.ascontiguousarray(frame.image[:, :, ::-1])
        if (h, w) == (size, size):
            return rgb
        interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
        return cv2.resize(rgb, (size, size), interpolation=interp)

    @torch.inference_mode()
    def caption_window(self, thumbs: Sequence[np.ndarray], source: str = "",
                       objects: Sequence[str] | None = None) -> CaptionResult:
        """One caption from frames of one source, oldest first, the newest last (``thumbnail``s):
        their features pooled (those of another scene than the newest left out), guided by the
        newest frame's object labels. ``scene_change``: the newest frame differs from the one of
        the previous caption of ``source``."""
        feats = self.encode(list(thumbs))  # (K, C, h, w)
        pooled = torch.nn.functional.normalize(feats.mean(dim=(2, 3)), dim=1)  # (K, C)
        newest = pooled[-1]
        keep = (pooled @ newest) >= self.cut_below  # (K,) the newest always kept
        window = feats[keep].mean(dim=0, keepdim=True)  # (1, C, h, w)
        last = self._last_pooled.get(source)
        change = last is not None and float(last @ newest) < self.cut_below
        self._last_pooled[source] = newest
        result = self.decode(window, objects=[objects] if objects else None)[0]
        result.scene_change = change
        result.picture = torch.nn.functional.normalize(window.mean(dim=(2, 3)), dim=1)[0].cpu().numpy()
        return result

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
