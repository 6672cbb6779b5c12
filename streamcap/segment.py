"""Mask R-CNN (torchvision) as a pipeline stage: BGR frames in, ``Detections`` out.

What the model sees: each frame is resized here (OpenCV, bilinear, as torchvision does) so its
short side is ``seg_size`` (long side at most ``seg_size * 1333 / 800``), converted to RGB and
to float by the weights' own transform, and normalized inside the model. The model's own
resize and mask pasting are switched off (``_NoResizeTransform``): it returns boxes in the
resized image and 28x28 mask probabilities, and ``paste_masks`` draws only the kept
detections straight at the output size (the frame, or ``draw_size``). Pasting every one of
torchvision's up-to-100 masks as float images at full resolution is what makes its own
postprocess slow; here the threshold, class filter and ``max_detections`` apply first.

``seg_size`` default (``None``): 512 on a CPU; on a GPU 800, the model's training scale, with
smaller frames left at their own size (never scaled up).
``seg_size=0`` feeds frames at their own size.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from streamcap.errors import BadInputError
from streamcap.rle import detections_summary  # noqa: F401  (re-exported for the JSONL sink)
from streamcap.types import Detections, Frame
from streamcap.weights import SEGMENTER_WEIGHTS, get_weights_entry, resolve_segmenter_weights

log = logging.getLogger(__name__)

CPU_SEG_SIZE = 512  # default short side on a CPU: about 4x cheaper than 800, still finds people
GPU_SEG_SIZE = 800  # on a GPU: the model's training scale, never scaling a smaller frame up
MAX_SIZE_RATIO = 1333 / 800  # torchvision's long-side cap relative to the short side
GPU_BATCH = 4
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX512-BF16 or AMX tiles), as torch reports it."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def resolve_precision(precision: str, device: torch.device, fp16: bool = True) -> str:
    """"auto" -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; others as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16" if fp16 else "fp32"
    return "bf16" if cpu_native_bf16() else "fp32"


def category_names(model: str = "v1") -> list[str]:
    """The model's category list (index = label id), from the torchvision weights enum."""
    return list(get_weights_entry(model).meta["categories"])


def valid_class_names(model: str = "v1") -> list[str]:
    """Category names a user may filter by (no '__background__' or 'N/A' placeholders)."""
    return [c for c in category_names(model) if c not in ("__background__", "N/A")]


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that decides what the segmenter finds and how fast (frozen, hashable).

    model            "v1" (maskrcnn_resnet50_fpn, default) or "v2" (maskrcnn_resnet50_fpn_v2)
    weights          None: hub cache, else download; a state-dict path; or "random" (untrained)
    score_threshold  keep detections scoring at least this (0..1)
    mask_threshold   a mask pixel is set where the mask probability is above this (0..1)
    classes          keep only these category names (e.g. ("person", "car")); None keeps all
    seg_size         short side the model sees; None: 512 on CPU, 800 on GPU (smaller frames as they are); 0: frame size
    draw_size        (w, h) to paste masks at instead of the frame size (boxes stay in frame px)
    device           "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    max_detections   at most this many detections per frame, best first
    batch            frames per model call; None: 1 on CPU, 4 on GPU
    precision        "auto" | "fp32" | "bf16" | "fp16": the autocast dtype of the forward pass.
                     auto: fp16 on CUDA, bf16 (+ channels_last) on a CPU with native bf16
                     (AVX512-BF16 or AMX), fp32 elsewhere; see ``resolve_precision``
    fp16             legacy switch: False turns CUDA's auto precision into fp32
    channels_last    channels-last memory format (bf16 on a CPU turns it on)
    threads          torch CPU threads while the segmenter runs (restored after); None: unchanged
    masks            paste masks (False: boxes only, ``Detections.masks`` is None)
    proposals        RPN proposals kept per image (None: torchvision's 1000). The box head runs on
                     every proposal, which dominates CPU time at small seg sizes; 300 is a
                     common speed/accuracy trade-off.
    seed             seed for ``weights="random"`` (the global RNG is left untouched)
    download         allow downloading weights when they are not cached
    """

    model: str = "v1"
    weights: str | None = None
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    classes: tuple[str, ...] | None = None
    seg_size: int | None = None
    draw_size: tuple[int, int] | None = None
    device: str = "auto"
    max_detections: int = 100
    batch: int | None = None
    precision: str = "auto"
    fp16: bool = True
    channels_last: bool = False
    threads: int | None = None
    masks: bool = True
    proposals: int | None = None
    seed: int = 0
    download: bool = True

    def __post_init__(self) -> None:
        if self.model not in SEGMENTER_WEIGHTS:
            raise BadInputError(f"Unknown --seg-model {self.model!r}; choose one of: {', '.join(SEGMENTER_WEIGHTS)}")
        if self.weights is not None:
            object.__setattr__(self, "weights", str(self.weights))
        for name in ("score_threshold", "mask_threshold"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise BadInputError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")
        if self.seg_size is not None and (self.seg_size != 0 and self.seg_size < 32):
            raise BadInputError(f"--seg-size must be at least 32 (or 0 for the frame size), got {self.seg_size}")
        if self.max_detections < 1:
            raise BadInputError(f"--max-detections must be at least 1, got {self.max_detections}")
        if self.batch is not None and self.batch < 1:
            raise BadInputError(f"batch must be at least 1, got {self.batch}")
        if self.proposals is not None and self.proposals < 1:
            raise BadInputError(f"proposals must be at least 1, got {self.proposals}")
        if self.threads is not None and self.threads < 1:
            raise BadInputError(f"threads must be at least 1, got {self.threads}")
        if self.draw_size is not None:
            w, h = (int(v) for v in self.draw_size)
            if w < 1 or h < 1:
                raise BadInputError(f"draw_size must be positive (w, h), got {self.draw_size}")
            object.__setattr__(self, "draw_size", (w, h))
        if self.classes is not None:
            classes = self.classes
            if isinstance(classes, str):
                classes = classes.split(",")
            wanted = tuple(c.strip() for c in classes if c.strip())
            valid = valid_class_names(self.model)
            by_lower = {c.lower(): c for c in valid}
            unknown = [c for c in wanted if c.lower() not in by_lower]
            if unknown:
                raise BadInputError(
                    f"Unknown class name(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(valid)}"
                )
            object.__setattr__(self, "classes", tuple(by_lower[c.lower()] for c in wanted) or None)
        if self.precision not in PRECISIONS:
            raise BadInputError(f"Unknown --precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.device != "auto":
            try:
                dev = torch.device(self.device)
            except (RuntimeError, TypeError):
                raise BadInputError(f"Unknown --device {self.device!r}; use auto, cpu, cuda or cuda:N") from None
            if dev.type not in ("cpu", "cuda"):
                raise BadInputError(f"Unsupported --device {self.device!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device that is not there is bad input."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


class _NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform minus resize and mask pasting: the segmenter does both itself."""

    def resize(self, image, target=None):  # type: ignore[override]
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):  # type: ignore[override]
        return result  # boxes in the model input's pixels, masks (N, 1, 28, 28) probabilities


def _build_model(model: str) -> torch.nn.Module:
    """The torchvision architecture exactly as its COCO weights expect, without any download."""
    from torchvision.models.detection import mask_rcnn

    if model == "v1":
        # As maskrcnn_resnet50_fpn(weights=COCO_V1) builds it: frozen BN, eps 0.
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.models.resnet import resnet50
        from torchvision.ops.misc import FrozenBatchNorm2d

        backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        net = mask_rcnn.MaskRCNN(_resnet_fpn_extractor(backbone, 3), num_classes=91)
        for module in net.modules():  # torchvision's overwrite_eps(model, 0.0) for COCO_V1
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    else:
        net = mask_rcnn.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    t = net.transform
    net.transform = _NoResizeTransform(
        t.min_size, t.max_size, t.image_mean, t.image_std, size_divisible=t.size_divisible
    )
    return net


def _load_state(net: torch.nn.Module, state: Any, where: str) -> None:
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or first[0]
        raise BadInputError(f"Weights {where} do not fit this Mask R-CNN: {detail}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise BadInputError(f"Weights {where} do not fit this Mask R-CNN: {', '.join(parts)}")


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use n intra-op CPU threads inside the block, and restore the previous count after.

    torch's count is process-wide: inside a pipeline run it is set once before the workers
    start (``Segmenter.run_scope``), so here it already matches and nothing is changed while
    another worker (the caption model) runs."""
    if n is None or torch.get_num_threads() == n:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def input_size(h: int, w: int, seg_size: int, upscale: bool = True) -> tuple[int, int]:
    """(h, w) the model sees: short side seg_size, long side at most seg_size * 1333 / 800.

    ``upscale=False`` leaves a frame smaller than that at its own size (the GPU default)."""
    if seg_size == 0:
        return h, w
    scale = seg_size / min(h, w)
    max_size = round(seg_size * MAX_SIZE_RATIO)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    if not upscale and scale >= 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def paste_masks(
    probs: np.ndarray, boxes: np.ndarray, out_hw: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """(N, M, M) mask probabilities in their boxes -> (N, H, W) bool masks of the output image.

    Same geometry as torchvision's ``paste_masks_in_image`` (1-pixel zero padding, boxes grown
    by (M+2)/M and truncated to ints, bilinear resize with half-pixel centres), but with
    OpenCV on the box region only, thresholded straight to bool: no (N, H, W) float images.
    ``boxes`` (N, 4) xyxy in output pixels.
    """
    h_img, w_img = out_hw
    n = len(probs)
    out = np.zeros((n, h_img, w_img), dtype=bool)
    if n == 0:
        return out
    m = probs.shape[-1]
    scale = (m + 2) / m
    padded = np.pad(probs.astype(np.float32, copy=False), ((0, 0), (1, 1), (1, 1)))  # (N, M+2, M+2)
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    hw = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    hh = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    grown = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1).astype(np.int64)  # trunc like .to(int64)
    for i in range(n):
        x0, y0, x1, y1 = (int(v) for v in grown[i])
        w = max(x1 - x0 + 1, 1)
        h = max(y1 - y0 + 1, 1)
        xa, xb = max(x0, 0), min(x1 + 1, w_img)
        ya, yb = max(y0, 0), min(y1 + 1, h_img)
        if xa >= xb or ya >= yb:
            continue
        resized = cv2.resize(padded[i], (w, h), interpolation=cv2.INTER_LINEAR)  # (h, w)
        out[i, ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out


def paste_masks_torch(
    probs: torch.Tensor, boxes: torch.Tensor, out_hw: tuple[int, int], threshold: float = 0.5,
    chunk_pixels: int = 1 << 26,
) -> torch.Tensor:
    """``paste_masks`` on torch tensors, on whatever device they are (a GPU: no host loop, no
    frame-size float array on the host): (N, M, M) probabilities, (N, 4) xyxy boxes in output
    pixels -> (N, H, W) bool masks.

    The same geometry and arithmetic order as ``paste_masks``' OpenCV resize (source coordinate
    (d + 0.5) * (1 / (out / in)) - 0.5 in double, clamped to the edge pixels; a horizontal then a
    vertical linear pass), done for all detections at once by gathering, ``chunk_pixels`` output
    pixels (N * H * W) at a time to bound the memory.
    """
    h_img, w_img = out_hw
    n = probs.shape[0]
    dev = probs.device
    if n == 0:
        return torch.zeros((0, h_img, w_img), dtype=torch.bool, device=dev)
    m = probs.shape[-1]
    scale = (m + 2) / m
    padded = torch.nn.functional.pad(probs.float(), (1, 1, 1, 1))  # (N, M+2, M+2)
    boxes = boxes.float()
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    hw = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    hh = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    grown = torch.stack([cx - hw, cy - hh, cx + hw, cy + hh], dim=1).to(torch.int64)  # trunc like numpy
    x0, y0, x1, y1 = grown.unbind(1)
    out = torch.empty((n, h_img, w_img), dtype=torch.bool, device=dev)
    step = max(1, chunk_pixels // max(1, h_img * w_img))
    for a in range(0, n, step):
        b = min(n, a + step)
        ix0, ix1, ax0, ax1, okx = _linear_taps(x0[a:b], x1[a:b], m + 2, w_img)  # (k, W)
        iy0, iy1, ay0, ay1, oky = _linear_taps(y0[a:b], y1[a:b], m + 2, h_img)  # (k, H)
        p = padded[a:b]
        k, rows = p.shape[0], p.shape[1]
        # horizontal pass: (k, M+2, W)
        c0 = p.gather(2, ix0[:, None, :].expand(k, rows, w_img))
        c1 = p.gather(2, ix1[:, None, :].expand(k, rows, w_img))
        horiz = c0 * ax0[:, None, :] + c1 * ax1[:, None, :]
        # vertical pass: (k, H, W)
        r0 = horiz.gather(1, iy0[:, :, None].expand(k, h_img, w_img))
        r1 = horiz.gather(1, iy1[:, :, None].expand(k, h_img, w_img))
        val = r0 * ay0[:, :, None] + r1 * ay1[:, :, None]
        out[a:b] = (val > threshold) & oky[:, :, None] & okx[:, None, :]
    return out


def _linear_taps(lo: torch.Tensor, hi: torch.Tensor, src: int, size: int):
    """For boxes spanning output pixels lo..hi (k of them) and a source of ``src`` pixels: per
    output pixel 0..size-1 of each box the two source taps, their weights, and whether the pixel
    lies in the box. OpenCV's INTER_LINEAR coordinates (double, then float; edge taps clamped)."""
    dev = lo.device
    extent = torch.clamp(hi - lo + 1, min=1)  # (k,) the box's size in output pixels
    d = torch.arange(size, device=dev, dtype=torch.int64)[None, :] - lo[:, None]  # (k, size) pixel in the box
    inv = extent.to(torch.float64) / src
    f = ((d.to(torch.float64) + 0.5) * (1.0 / inv)[:, None] - 0.5).to(torch.float32)
    i0 = torch.floor(f)
    frac = f - i0
    i0 = i0.to(torch.int64)
    under = i0 < 0
    over = i0 >= src - 1
    frac = torch.where(under | over, torch.zeros_like(frac), frac)
    i0 = torch.where(under, torch.zeros_like(i0), torch.where(over, torch.full_like(i0, src - 1), i0))
    i1 = torch.clamp(i0 + 1, max=src - 1)
    inside = (d >= 0) & (d <= (hi - lo)[:, None])
    i0 = torch.where(inside, i0, torch.zeros_like(i0))
    i1 = torch.where(inside, i1, torch.zeros_like(i1))
    return i0, i1, 1.0 - frac, frac, inside


class Segmenter:
    """An ``InferenceStage``: ``segmenter(frames) -> list[Detections]``, one per frame, in order.

    ``timings`` accumulates seconds per phase ("preprocess", "model", "paste") and
    ``timings["counts"]`` = {"frames", "batches", "detections"}; ``reset_timings()`` clears.
    ``random_weights`` is True for an untrained model; ``weights_source`` says where weights came
    from ("file", "cache", "download", "random", "custom").
    """

    name = "segment"

    def __init__(
        self,
        config: SegmenterConfig,
        model: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]],
        *,
        device: torch.device | str = "cpu",
        random_weights: bool = False,
        weights_source: str = "custom",
        weights_path: str | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.device = torch.device(device)
        self.random_weights = random_weights
        self.weights_source = weights_source
        self.weights_path = weights_path
        self.names: list[str] = category_names(config.model)
        self._to_float = get_weights_entry(config.model).transforms()  # ObjectDetection: uint8 -> [0, 1]
        on_gpu = self.device.type == "cuda"
        self.seg_size = config.seg_size if config.seg_size is not None else (GPU_SEG_SIZE if on_gpu else CPU_SEG_SIZE)
        self._upscale = not (on_gpu and config.seg_size is None)  # GPU default: 800, never scaled up
        self.batch_size = config.batch or (GPU_BATCH if on_gpu else 1)
        self.precision = resolve_precision(config.precision, self.device, config.fp16)
        self._amp_dtype = _AMP_DTYPES[self.precision]
        self._class_ids = (
            None if config.classes is None else np.array([self.names.index(c) for c in config.classes], np.int64)
        )
        # On a GPU: frames are resized and converted on the device, the kept masks are pasted there
        # (``paste_masks_torch``) and each batch's results come to the host in two copies (the small
        # fields, then every mask of the batch at once); ``prefetch`` lets a reader thread prepare
        # the next batch while this one runs (``overlap``). The host path stays on a CPU.
        self._device_preprocess = on_gpu
        self._staging = _HostStaging()
        self._device_paste = on_gpu
        self.overlap = on_gpu
        self._prepared: dict[tuple[str, int], tuple[np.ndarray, torch.Tensor]] = {}
        self.timings: dict[str, Any] = {}
        self.reset_timings()

    def reset_timings(self) -> None:
        self.timings = {
            "preprocess": 0.0,
            "model": 0.0,
            "paste": 0.0,
            "counts": {"frames": 0, "batches": 0, "detections": 0},
        }

    def describe(self) -> str:
        """One line for logs: model, weights, device, sizes."""
        w = "RANDOM (untrained) weights" if self.random_weights else f"weights from {self.weights_source}"
        if self.weights_path:
            w += f" ({self.weights_path})"
        return (
            f"Mask R-CNN {self.config.model}, {w}, device {self.device}, seg size {self.seg_size or 'frame'}, "
            f"batch {self.batch_size}, precision {self.precision}"
        )

    # -- public entry points -------------------------------------------------------------
    def run_scope(self) -> contextlib.AbstractContextManager:
        """Held by the pipeline for a whole run, entered before its workers start: applies
        ``config.threads`` once (for every worker of the run) and restores it at the end."""
        return _torch_threads(self.config.threads)

    def __call__(self, frames: Sequence[Frame]) -> list[Detections]:
        ready = []
        for f in frames:
            image, tensor = self._prepared.pop((f.source, f.index), (None, None))
            ready.append(tensor if image is f.image else None)  # prepared from this very frame
        return self.segment_images([f.image for f in frames], ready)

    def prefetch(self, frames: Sequence[Frame]) -> None:
        """Prepare ``frames`` (resize, convert, copy to the device) ahead of the call that will
        segment them, e.g. in another thread while the model runs on the batch before."""
        for f in frames:
            self._prepared[(f.source, f.index)] = (f.image, self._preprocess(f.image))
        while len(self._prepared) > 4 * self.batch_size:  # a frame prepared but never called for
            self._prepared.pop(next(iter(self._prepared)))

    def segment_images(
        self, images: Sequence[np.ndarray], ready: Sequence[torch.Tensor | None] | None = None
    ) -> list[Detections]:
        """BGR uint8 (H, W, 3) images -> one ``Detections`` per image (``ready``: inputs already prepared)."""
        out: list[Detections] = []
        with _torch_threads(self.config.threads):
            for start in range(0, len(images), self.batch_size):
                end = start + self.batch_size
                out.extend(self._run_batch(images[start:end], None if ready is None else ready[start:end]))
        return out

    # -- phases ------------------------------------------------------------------------------
    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        ih, iw = input_size(h, w, self.seg_size, self._upscale)
        if self._device_preprocess:
            return self._preprocess_on_device(image, (ih, iw))
        if (ih, iw) != (h, w):
            image = cv2.resize(image, (iw, ih), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # (ih, iw, 3) uint8
        t = torch.from_numpy(rgb)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        t = t.permute(2, 0, 1)  # (3, ih, iw)
        return self._to_float(t)  # float32 in [0, 1], normalized inside the model

    def _preprocess_on_device(self, image: np.ndarray, in_hw: tuple[int, int]) -> torch.Tensor:
        """The frame to the device as uint8 (pinned, asynchronous), then BGR -> RGB, to float and
        resized there (bilinear, half-pixel centres, as OpenCV's INTER_LINEAR on the host)."""
        t = torch.from_numpy(image)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        t = self._to_float(t.permute(2, 0, 1).flip(0))  # (3, h, w) RGB float in [0, 1]
        if tuple(t.shape[-2:]) != in_hw:
            t = torch.nn.functional.interpolate(t[None], size=in_hw, mode="bilinear", align_corners=False)[0]
        return t

    def _forward_raw(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            # channels_last: the weights are converted in build_segmenter; convolutions then
            # propagate the format (the (3, H, W) inputs are batched inside the model).
            amp = (torch.autocast(self.device.type, dtype=self._amp_dtype) if self._amp_dtype is not None
                   else contextlib.nullcontext())
            with amp:
                return self.model(tensors)

    def _forward(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outputs = self._forward_raw(tensors)
        # to the CPU at the edge: boxes (N, 4), scores (N,), labels (N,), masks (N, 1, 28, 28)
        return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]

    def _run_batch(
        self, images: Sequence[np.ndarray], ready: Sequence[torch.Tensor | None] | None = None
    ) -> list[Detections]:
        t0 = time.perf_counter()
        tensors = [r if r is not None else self._preprocess(im) for im, r in zip(images, ready or [None] * len(images))]
        t1 = time.perf_counter()
        if self._device_paste:
            outputs = self._forward_raw(tensors)
            meta = self._batch_fields(outputs)  # one copy for the batch; it waits for the model
            t2 = time.perf_counter()
            results = self._postprocess_on_device(outputs, meta, tensors, images)
        else:
            outputs = self._forward(tensors)  # .cpu() synchronizes with the GPU
            t2 = time.perf_counter()
            results = [
                self._postprocess(o, tuple(t.shape[-2:]), im.shape[:2]) for o, t, im in zip(outputs, tensors, images)
            ]
        t3 = time.perf_counter()
        tm = self.timings
        tm["preprocess"] += t1 - t0
        tm["model"] += t2 - t1
        tm["paste"] += t3 - t2
        tm["counts"]["frames"] += len(images)
        tm["counts"]["batches"] += 1
        tm["counts"]["detections"] += sum(len(r) for r in results)
        return results

    def _postprocess(
        self, out: dict[str, torch.Tensor], in_hw: tuple[int, int], frame_hw: tuple[int, int]
    ) -> Detections:
        """Model output in input pixels -> filtered ``Detections`` in frame pixels, masks pasted."""
        scores = out["scores"].numpy().astype(np.float32)
        labels = out["labels"].numpy().astype(np.int64)
        boxes = out["boxes"].numpy().astype(np.float32).reshape(-1, 4)
        idx, fboxes, mboxes, out_hw = self._select(scores, labels, boxes, in_hw, frame_hw)
        masks = None
        if self.config.masks and "masks" in out:
            probs = out["masks"].numpy()[idx, 0]  # (K, 28, 28)
            masks = paste_masks(probs, mboxes, out_hw, self.config.mask_threshold)
        return Detections(boxes=fboxes, scores=scores[idx], labels=labels[idx], names=self.names, masks=masks)

    @staticmethod
    def _batch_fields(outputs: list[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """Each image's (N, 6) [boxes, score, label] float32 rows, in one copy from the device."""
        rows = [torch.cat([o["boxes"].float().reshape(-1, 4), o["scores"].float()[:, None],
                           o["labels"].float()[:, None]], 1) for o in outputs]
        flat = torch.cat(rows).cpu().numpy() if rows else np.zeros((0, 6), np.float32)
        return np.split(flat, np.cumsum([len(r) for r in rows])[:-1])

    def _postprocess_on_device(
        self, outputs: list[dict[str, torch.Tensor]], meta: list[np.ndarray], tensors: list[torch.Tensor],
        images: Sequence[np.ndarray],
    ) -> list[Detections]:
        """``_postprocess`` for a batch whose outputs stay on the device: the same selection on the
        host, the kept masks pasted on the device, all of them copied back at once."""
        cfg = self.config
        picked, pasted = [], []
        for out, rows, t, im in zip(outputs, meta, tensors, images):
            scores, labels, boxes = rows[:, 4].copy(), rows[:, 5].astype(np.int64), rows[:, :4].copy()
            idx, fboxes, mboxes, out_hw = self._select(scores, labels, boxes, tuple(t.shape[-2:]), im.shape[:2])
            picked.append((scores[idx], labels[idx], fboxes, out_hw))
            if cfg.masks and "masks" in out:
                sel = torch.as_tensor(idx, device=out["masks"].device)
                pasted.append(paste_masks_torch(out["masks"][sel, 0], torch.as_tensor(mboxes, device=sel.device),
                                                out_hw, cfg.mask_threshold))
        masks = self._staging.masks_to_host(pasted) if pasted else []
        results = []
        for k, (scores, labels, fboxes, (oh, ow)) in enumerate(picked):
            m = masks[k] if pasted else None
            results.append(Detections(boxes=fboxes, scores=scores, labels=labels, names=self.names, masks=m))
        return results

    def _select(
        self, scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray, in_hw: tuple[int, int],
        frame_hw: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """The kept detections (threshold, classes, best first, at most max_detections): their
        indices, boxes in frame pixels, boxes in output (mask) pixels, and the output (h, w)."""
        cfg = self.config
        fh, fw = frame_hw
        ow, oh = cfg.draw_size if cfg.draw_size is not None else (fw, fh)
        keep = scores >= cfg.score_threshold
        if self._class_ids is not None:
            keep &= np.isin(labels, self._class_ids)
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-scores[idx], kind="stable")][: cfg.max_detections]
        ih, iw = in_hw
        sx, sy = fw / iw, fh / ih
        fboxes = boxes[idx] * np.array([sx, sy, sx, sy], np.float32)
        fboxes[:, 0::2] = fboxes[:, 0::2].clip(0, fw)
        fboxes[:, 1::2] = fboxes[:, 1::2].clip(0, fh)
        mboxes = boxes[idx] * np.array([ow / iw, oh / ih, ow / iw, oh / ih], np.float32)
        return idx, fboxes, mboxes, (oh, ow)


class _HostStaging:
    """Device masks -> host arrays with little traffic and no per-batch pinned allocation.

    Full-frame masks are mostly empty: at 1080p with 100 detections a frame's (N, H, W) bool
    masks are 207 MB, and copying them whole (into freshly pinned memory) cost more than pasting
    on the host (measured on an H200: 118 vs 53 ms a frame). So only each mask's bounding box of
    set pixels crosses to the host (found on the device; one copy for the rows/columns, one for
    all the crops of the batch), through one pinned buffer kept and grown across batches, and is
    written into zeroed host arrays: the same masks, bit for bit.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def _copy(self, parts: list[torch.Tensor]) -> list[np.ndarray]:
        """Bool/uint8 device tensors -> host uint8 views (valid until the next copy)."""
        flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in parts])
        if flat.device.type == "cuda":
            if self._buf is None or self._buf.numel() < flat.numel():
                self._buf = torch.empty(max(flat.numel(), 1 << 20) * 5 // 4, dtype=torch.uint8, pin_memory=True)
            host = self._buf[: flat.numel()]
            host.copy_(flat, non_blocking=True)
            torch.cuda.current_stream(flat.device).synchronize()
        else:
            host = flat
        arr = host.numpy()
        return np.split(arr, np.cumsum([t.numel() for t in parts])[:-1])

    def masks_to_host(self, pasted: list[torch.Tensor]) -> list[np.ndarray]:
        """Each (K, H, W) bool device tensor -> a (K, H, W) bool host array, equal to it."""
        lines = self._copy([t for p in pasted for t in (p.any(2), p.any(1))])  # (K, H) rows, (K, W) columns
        spans, crops = [], []
        for j, p in enumerate(pasted):
            k, h, w = p.shape
            rows, cols = lines[2 * j].reshape(k, h), lines[2 * j + 1].reshape(k, w)
            for i in range(k):
                ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
                if len(ys):
                    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
                    spans.append((j, i, y0, y1, x0, x1))
                    crops.append(p[i, y0:y1, x0:x1])
        outs = [np.zeros(p.shape, dtype=bool) for p in pasted]
        if crops:
            for (j, i, y0, y1, x0, x1), data in zip(spans, self._copy(crops)):
                outs[j][i, y0:y1, x0:x1] = data.reshape(y1 - y0, x1 - x0).view(bool)
        return outs


def build_segmenter(config: SegmenterConfig | None = None, **options: Any) -> Segmenter:
    """Build the Mask R-CNN stage: resolve weights (path, cache, download or random), load, eval.

    ``build_segmenter(SegmenterConfig(seg_size=384))`` or ``build_segmenter(seg_size=384)``.
    Raises BadInputError for unreadable or mismatched weights and for the offline case.
    Changes nothing global: the random init runs under a forked RNG.
    """
    if config is None:
        config = SegmenterConfig(**options)
    elif options:
        from dataclasses import replace

        config = replace(config, **options)
    device = resolve_device(config.device)
    resolved = resolve_segmenter_weights(
        config.model, config.weights, download=config.download, progress=sys.stderr.isatty()
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = _build_model(config.model)
    if resolved.state_dict is not None:
        _load_state(net, resolved.state_dict, str(resolved.path))
    else:
        log.warning(
            "Using an untrained Mask R-CNN %s (--seg-weights random, seed %d): detections are meaningless.",
            config.model,
            config.seed,
        )
    net.eval()
    rh = net.roi_heads
    rh.score_thresh = config.score_threshold  # the model drops low scores before its mask head
    # With a class filter, let the model keep more so that filtering does not starve the result.
    rh.detections_per_img = config.max_detections if config.classes is None else max(config.max_detections, 100)
    if config.proposals is not None:
        net.rpn._post_nms_top_n["testing"] = config.proposals
    net.to(device)
    precision = resolve_precision(config.precision, device, config.fp16)
    if precision == "fp16" and device.type == "cpu":
        log.warning("--precision fp16 on a CPU: float16 autocast is slow on most CPUs; bf16 or fp32 is usually faster")
    if config.channels_last or (precision == "bf16" and device.type == "cpu"):
        net.to(memory_format=torch.channels_last)
    return Segmenter(
        config,
        net,
        device=device,
        random_weights=resolved.source == "random",
        weights_source=resolved.source,
        weights_path=None if resolved.path is None else str(resolved.path),
    )
