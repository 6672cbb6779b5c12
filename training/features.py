"""Frozen-encoder feature cache: every image is encoded once into a numpy memmap.

Layout of one cache (under --cache-dir): ``<key>.f16`` holds float16 (N, L, C) features
(L = h*w regions, C channels) in the order of ``<key>.json``'s "images"; the JSON also
records how many rows are done, so an interrupted extraction resumes where it stopped.
The key hashes the encoder name, input size, flip flag and the image list, and, for an encoder
whose weights were fine-tuned (a checkpoint's ``encoder_state``), a hash of those weights: the
features of a fine-tuned encoder never mix with the pretrained encoder's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from streamcap.errors import BadInputError


def weights_tag(state: dict[str, torch.Tensor] | None) -> str | None:
    """A short hash of an encoder's weights (None for the pretrained encoder)."""
    if state is None:
        return None
    h = hashlib.sha1()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode("ascii"))
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:12]


def _encoder_part(encoder_name: str, tag: str | None) -> str:
    return encoder_name if tag is None else f"{encoder_name}-ft{tag}"


def cache_key(encoder_name: str, size: int, images: Sequence[str], flip: bool, tag: str | None = None) -> str:
    h = hashlib.sha1("\n".join(images).encode("utf-8")).hexdigest()[:12]
    return f"{_encoder_part(encoder_name, tag)}_{size}{'_flip' if flip else ''}_{len(images)}_{h}"


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise BadInputError(f"{path}: cannot read image ({err})") from err


class FeatureCache:
    """Read access to a finished cache: ``cache[i]`` -> float16 (L, C) array."""

    def __init__(self, data_path: Path, meta: dict):
        self.meta = meta
        self.images: list[str] = meta["images"]
        self.index = {n: i for i, n in enumerate(self.images)}
        self.shape = tuple(meta["shape"])
        self.data = np.memmap(data_path, dtype=np.float16, mode="r", shape=self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, names: Sequence[str]) -> np.ndarray:
        return np.stack([self.data[self.index[n]] for n in names])

    def pooled(self) -> np.ndarray:
        """(N, C) float32 mean over regions, in chunks (the whole memmap is never loaded)."""
        out = np.empty((self.shape[0], self.shape[2]), dtype=np.float32)
        for s in range(0, self.shape[0], 512):
            out[s:s + 512] = self.data[s:s + 512].astype(np.float32).mean(axis=1)
        return out


def build_cache(
    images: Sequence[str],
    images_dir: Path,
    cache_dir: Path,
    encoder_name: str = "efficientnet_lite0",
    size: int = 224,
    flip: bool = False,
    batch_size: int = 32,
    encoder=None,
    progress: bool = True,
    threads: int | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
) -> FeatureCache:
    """Encode ``images`` (names under ``images_dir``) once; reuse or resume an existing cache.

    ``encoder_state``: fine-tuned weights for the encoder (a checkpoint's ``encoder_state``);
    the features are then computed with them and cached under a key that includes their hash.
    Without it the pretrained ``encoder_name`` is used (a given ``encoder`` must be that one).
    """
    from streamcap.caption.encoder import build_encoder, preprocess

    images = list(images)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = weights_tag(encoder_state)
    key = cache_key(encoder_name, size, images, flip, tag)
    data_path, meta_path = cache_dir / f"{key}.f16", cache_dir / f"{key}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta.get("done", 0) >= len(images) and data_path.is_file():
        return FeatureCache(data_path, meta)
    found = find_superset(cache_dir, encoder_name, size, flip, images, tag)
    if found is not None:
        return found

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if encoder is None:
            encoder = build_encoder(encoder_name, pretrained=encoder_state is None)
            if encoder_state is not None:
                encoder.load_state_dict(encoder_state)
        encoder = encoder.eval()
        with torch.inference_mode():
            probe = encoder(torch.zeros(1, 3, size, size))  # (1, C, h, w)
        c, h, w = probe.shape[1:]
        shape = (len(images), h * w, c)
        if meta is None or tuple(meta["shape"]) != shape or not data_path.is_file():
            meta = {"images": images, "shape": list(shape), "encoder": encoder_name,
                    "weights": tag or "pretrained", "size": size, "flip": flip, "done": 0, "dtype": "float16"}
            np.memmap(data_path, dtype=np.float16, mode="w+", shape=shape).flush()
        data = np.memmap(data_path, dtype=np.float16, mode="r+", shape=shape)
        start, t0 = meta["done"], time.time()
        bar = _progress(progress, len(images), start, f"features {encoder_name}{' flip' if flip else ''}")
        with bar as (prog, task):
            for s in range(start, len(images), batch_size):
                names = images[s:s + batch_size]
                arrays = [_load_rgb(Path(images_dir) / n) for n in names]
                if flip:
                    arrays = [a[:, ::-1] for a in arrays]
                x = preprocess(arrays, size=size)  # (B, 3, size, size)
                with torch.inference_mode():
                    f = encoder(x)  # (B, C, h, w)
                f = f.flatten(2).transpose(1, 2)  # (B, L, C)
                data[s:s + len(names)] = f.numpy().astype(np.float16)
                meta["done"] = s + len(names)
                if (s // batch_size) % 20 == 0 or meta["done"] == len(images):
                    data.flush()
                    meta_path.write_text(json.dumps(meta))
                if prog is not None:
                    rate = (meta["done"] - start) / max(1e-6, time.time() - t0)
                    prog.update(task, completed=meta["done"], rate=f"{rate:.1f} img/s")
        data.flush()
        meta_path.write_text(json.dumps(meta))
    finally:
        torch.set_num_threads(old_threads)
    return FeatureCache(data_path, meta)


def find_superset(cache_dir: Path, encoder_name: str, size: int, flip: bool,
                  images: Sequence[str], tag: str | None = None) -> FeatureCache | None:
    """A finished cache (same encoder and weights, size, flip) that holds every one of ``images``."""
    want = set(images)
    prefix = f"{_encoder_part(encoder_name, tag)}_{size}{'_flip' if flip else ''}_"
    for meta_path in sorted(Path(cache_dir).glob(f"{prefix}*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (meta.get("flip") != flip or meta.get("weights", "pretrained") != (tag or "pretrained")
                or meta.get("done", 0) < len(meta.get("images", ()))
                or not want <= set(meta["images"])):
            continue
        data_path = meta_path.with_suffix(".f16")
        if data_path.is_file():
            return FeatureCache(data_path, meta)
    return None


class _NullBar:
    def __enter__(self):
        return None, None

    def __exit__(self, *exc):
        return False


class _RichBar:
    def __init__(self, total: int, done: int, label: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        self.task = self.progress.add_task(label, total=total, completed=done, rate="")

    def __enter__(self):
        self.progress.__enter__()
        return self.progress, self.task

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _progress(enabled: bool, total: int, done: int, label: str):
    return _RichBar(total, done, label) if enabled else _NullBar()
