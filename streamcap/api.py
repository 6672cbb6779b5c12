"""streamcap's Python API.

Image level (segmentation and drawing)::

    >>> import cv2
    >>> from streamcap.api import segment_image, draw_detections, detections_summary
    >>> det = segment_image("dog.jpg", classes=("dog", "bicycle"), seg_size=512)
    >>> det.class_names, det.boxes.shape, det.masks.shape      # masks: (N, H, W) bool
    >>> cv2.imwrite("dog_annotated.jpg", draw_detections(cv2.imread("dog.jpg"), det))
    >>> detections_summary(det)["counts"]                       # {"dog": 1, "bicycle": 1}

The pipeline runner (video in, annotated video + JSONL out) is in its own section below.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamcap.errors import BadInputError
from streamcap.render import Renderer, draw_detections as _draw_detections
from streamcap.rle import decode as rle_decode, detections_summary, encode as rle_encode
from streamcap.segment import Segmenter, SegmenterConfig, build_segmenter
from streamcap.types import Detections

__all__ = [
    "Renderer",
    "SegmenterConfig",
    "Segmenter",
    "build_segmenter",
    "clear_segmenter_cache",
    "detections_summary",
    "draw_detections",
    "load_image",
    "rle_decode",
    "rle_encode",
    "segment_image",
]

# ---------------------------------------------------------------------------------------------
# Image-level API: segmentation and drawing (streamcap.segment, streamcap.render)
# ---------------------------------------------------------------------------------------------

_CACHE_SIZE = 2  # built segmenters kept, least recently used dropped first (each ~170 MB)
_cache: "OrderedDict[SegmenterConfig, Segmenter]" = OrderedDict()
_cache_lock = threading.Lock()


def load_image(image_or_path: Any) -> np.ndarray:
    """A BGR uint8 (H, W, 3) array from a path, a BGR/gray/BGRA array, or a PIL image.

    Raises BadInputError for a file that is missing or not an image.
    """
    if isinstance(image_or_path, (str, Path)):
        path = Path(image_or_path).expanduser()
        if not path.is_file():
            raise BadInputError(f"Image not found: {path}")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise BadInputError(f"Cannot read image (not an image, or unsupported format): {path}")
        return image
    if hasattr(image_or_path, "convert") and hasattr(image_or_path, "size"):  # PIL.Image
        rgb = np.asarray(image_or_path.convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    image = np.asarray(image_or_path)
    if image.dtype != np.uint8:
        raise BadInputError(f"Expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise BadInputError(f"Expected an (H, W, 3) BGR image, got shape {image.shape}")


def get_segmenter(config: SegmenterConfig | None = None, **options: Any) -> Segmenter:
    """The segmenter for a config, built once and cached (the last two configs are kept)."""
    if config is None:
        config = SegmenterConfig(**options)
    elif options:
        config = replace(config, **options)
    with _cache_lock:
        seg = _cache.get(config)
        if seg is not None:
            _cache.move_to_end(config)
            return seg
    seg = build_segmenter(config)
    with _cache_lock:
        _cache[config] = seg
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return seg


def clear_segmenter_cache() -> None:
    """Forget the cached segmenters (frees their memory once nothing else holds them)."""
    with _cache_lock:
        _cache.clear()


def segment_image(image_or_path: Any, config: SegmenterConfig | None = None, **options: Any) -> Detections:
    """Segment one image: boxes (N, 4) xyxy pixels, masks (N, H, W) bool, scores, labels, names.

    ``image_or_path``: a file path, a BGR uint8 array (as cv2.imread gives), or a PIL image.
    Options are ``SegmenterConfig`` fields (``model``, ``weights``, ``score_threshold``,
    ``classes``, ``seg_size``, ``device``, ...); the model is built once per config and cached.

    >>> det = segment_image("street.jpg", classes=("person", "car"), score_threshold=0.6)
    >>> for name, score, box in zip(det.class_names, det.scores, det.boxes):
    ...     print(name, round(float(score), 2), box.astype(int).tolist())
    >>> people = det[det.labels == det.names.index("person")]
    """
    image = load_image(image_or_path)
    return get_segmenter(config, **options).segment_images([image])[0]


def draw_detections(image: Any, detections: Detections | None, **style: Any) -> np.ndarray:
    """A copy of the image (path or BGR array) with masks, boxes and label tags drawn.

    Style options are ``Renderer``'s (``alpha``, ``line_width``, ``font_scale``,
    ``show_boxes``, ``show_labels``, ``show_masks``, ``show_scores``, ``palette``).

    >>> image = cv2.imread("street.jpg")
    >>> out = draw_detections(image, segment_image(image), alpha=0.5, show_scores=False)
    >>> cv2.imwrite("street_annotated.jpg", out)
    """
    return _draw_detections(load_image(image), detections, **style)


# ---------------------------------------------------------------------------------------------
# Pipeline runner (video in, annotated video and JSONL out): added by the pipeline owner
# ---------------------------------------------------------------------------------------------
