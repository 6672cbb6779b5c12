"""Where model weights come from, in a fixed order: an explicit file, the local cache, a download.

Segmenter weights are torchvision's own files, named and located the way torchvision does:
``<torch.hub.get_dir()>/checkpoints/<file name of weights.url>`` (``$TORCH_HOME/hub/...``).
The file name carries a SHA-256 prefix (``maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth``), which
``verify_file`` checks as ``torch.hub`` does.

An offline machine with no cached file gets one ``BadInputError`` (exit 2) that names the
file, its URL and the folder to put it in; no traceback, and nothing is downloaded in tests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import torch
from torchvision.models.detection import (
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
)

from streamcap.errors import BadInputError

log = logging.getLogger(__name__)

# The segmenter models: short name -> torchvision weights entry (URL, categories, transforms).
SEGMENTER_WEIGHTS: dict[str, Any] = {
    "v1": MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    "v2": MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
}
SEGMENTER_DESCRIPTIONS = {
    "v1": "Mask R-CNN ResNet-50 FPN (torchvision maskrcnn_resnet50_fpn, COCO_V1, box mAP 37.9)",
    "v2": "Mask R-CNN ResNet-50 FPN v2 (torchvision maskrcnn_resnet50_fpn_v2, COCO_V1, box mAP 47.4)",
}
# The caption model ships with the package (it is not downloaded).
CAPTION_ASSET = Path(__file__).resolve().parent / "assets" / "caption_flickr8k_lite0.pt"

HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # as torch.hub: name-<sha256 prefix>.ext


@dataclass(frozen=True)
class ModelInfo:
    """One model streamcap can use, and whether this machine has its file."""

    name: str
    description: str
    filename: str
    url: str | None  # None for bundled files
    path: Path  # where the file is (or would be) on this machine
    cached: bool
    size_bytes: int | None


@dataclass(frozen=True)
class ResolvedWeights:
    """The outcome of ``resolve_segmenter_weights``."""

    source: str  # "file" | "cache" | "download" | "random"
    path: Path | None
    state_dict: Mapping[str, torch.Tensor] | None  # None for "random"


def get_weights_entry(model: str) -> Any:
    """The torchvision weights entry for a segmenter short name ("v1" or "v2")."""
    try:
        return SEGMENTER_WEIGHTS[model]
    except KeyError:
        raise BadInputError(
            f"Unknown segmentation model {model!r}; choose one of: {', '.join(SEGMENTER_WEIGHTS)}"
        ) from None


def weights_filename(entry: Any) -> str:
    """The file name torch.hub uses for a weights entry (the last part of its URL)."""
    return os.path.basename(urlparse(entry.url).path)


def hub_checkpoint_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``: torchvision's download cache (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(entry: Any) -> Path:
    """Where torchvision keeps (or would keep) this weights file."""
    return hub_checkpoint_dir() / weights_filename(entry)


def offline_message(model: str, reason: str = "") -> str:
    """One sentence saying how to get the weights onto an offline machine."""
    entry = get_weights_entry(model)
    why = f" ({reason})" if reason else ""
    return (
        f"Segmentation weights {weights_filename(entry)} for model {model} are not in the cache "
        f"and could not be downloaded{why}. Download {entry.url} and put it in "
        f"{hub_checkpoint_dir()}/ (or run `streamcap models fetch {model}` where there is "
        f"internet), pass --seg-weights PATH to a state-dict file, or use --seg-weights random "
        f"for an untrained model."
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a torchvision state dict (a bare dict, or wrapped as {"model"|"state_dict": ...})."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInputError(f"Segmentation weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and EOF errors all mean the same to the user
        raise BadInputError(f"Cannot read segmentation weights {p}: {type(err).__name__}: {err}") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{p} is not a torchvision state dict (a mapping of names to tensors)")
    return dict(obj)


def resolve_segmenter_weights(
    model: str = "v1",
    weights: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = False,
) -> ResolvedWeights:
    """Find the weights for a segmenter: explicit path, then the hub cache, then a download.

    ``weights``: None (default resolution), ``"random"`` (untrained), or a file path.
    Raises BadInputError with ``offline_message`` when nothing works.
    """
    entry = get_weights_entry(model)
    if weights is not None and str(weights) == "random":
        return ResolvedWeights("random", None, None)
    if weights is not None:
        p = Path(weights).expanduser()
        return ResolvedWeights("file", p, load_state_dict_file(p))
    cached = cache_path(entry)
    if cached.is_file():
        return ResolvedWeights("cache", cached, load_state_dict_file(cached))
    if not download:
        raise BadInputError(offline_message(model, "downloads are off"))
    log.info("Downloading %s to %s", entry.url, cached.parent)
    try:
        sd = torch.hub.load_state_dict_from_url(
            entry.url, progress=progress, check_hash=True, map_location="cpu"
        )
    except Exception as err:  # URLError, socket errors, hash mismatch (RuntimeError)
        reason = getattr(err, "reason", None) or err
        raise BadInputError(offline_message(model, f"{type(err).__name__}: {reason}")) from None
    return ResolvedWeights("download", cached, sd)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def list_models() -> list[ModelInfo]:
    """The segmenters (v1, v2), and the bundled caption model when present, with cache state."""
    out = []
    for name, entry in SEGMENTER_WEIGHTS.items():
        path = cache_path(entry)
        out.append(
            ModelInfo(
                name=name,
                description=SEGMENTER_DESCRIPTIONS[name],
                filename=weights_filename(entry),
                url=entry.url,
                path=path,
                cached=path.is_file(),
                size_bytes=_file_size(path),
            )
        )
    if not CAPTION_ASSET.is_file():
        return out
    out.append(
        ModelInfo(
            name="caption",
            description="Scene caption model (EfficientNet-Lite0 + attention LSTM, Flickr8k), bundled",
            filename=CAPTION_ASSET.name,
            url=None,
            path=CAPTION_ASSET,
            cached=CAPTION_ASSET.is_file(),
            size_bytes=_file_size(CAPTION_ASSET),
        )
    )
    return out


def expected_hash_prefix(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 prefix in a torch.hub file name, or None when the name has none."""
    m = HASH_REGEX.search(Path(path).name)
    return m.group(1) if m and m.group(1) else None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """(ok, message): does the file's SHA-256 start with the prefix in its name?"""
    p = Path(path)
    if not p.is_file():
        return False, f"missing: {p}"
    prefix = expected_hash_prefix(p)
    if prefix is None:
        return True, f"no hash in the file name, not checked: {p}"
    digest = sha256_file(p)
    if digest.startswith(prefix):
        return True, f"ok (sha256 {digest[:12]}...): {p}"
    return False, f"hash mismatch: expected sha256 prefix {prefix}, got {digest[:len(prefix)]}: {p}"


def _urlopen(url: str, timeout: float = 30.0):  # a seam for tests
    return urllib.request.urlopen(url, timeout=timeout)


def fetch_model(
    name: str,
    *,
    on_progress: Callable[[int, int | None], None] | None = None,
    force: bool = False,
) -> Path:
    """Download a segmenter's weights into the hub cache (to prepare an offline machine).

    Writes to a temporary file in the cache folder, checks the SHA-256 prefix, then renames,
    so an interrupted download never leaves a half file under the final name.
    ``on_progress(done_bytes, total_bytes_or_None)`` is called as blocks arrive.
    """
    entry = get_weights_entry(name)
    dst = cache_path(entry)
    if dst.is_file() and not force:
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"Cannot create the weights cache folder {dst.parent}: {err}") from None
    try:
        resp = _urlopen(entry.url)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise BadInputError(
            f"Cannot download {entry.url} ({reason}). Copy {weights_filename(entry)} from a machine "
            f"with internet into {dst.parent}/ instead."
        ) from None
    prefix = expected_hash_prefix(dst)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=dst.name + ".", suffix=".partial", dir=dst.parent)
    try:
        total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
        total_i = int(total) if total else None
        done = 0
        with os.fdopen(fd, "wb") as f, resp:
            while True:
                block = resp.read(1 << 16)
                if not block:
                    break
                f.write(block)
                h.update(block)
                done += len(block)
                if on_progress is not None:
                    on_progress(done, total_i)
        if prefix and not h.hexdigest().startswith(prefix):
            raise BadInputError(
                f"Downloaded {entry.url} but its SHA-256 does not start with {prefix}; not saved."
            )
        shutil.move(tmp_name, dst)
    except (urllib.error.URLError, OSError) as err:
        raise BadInputError(f"Download of {entry.url} failed: {err}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dst
