"""Carry instance masks from a keyframe to the frames after it, with OpenCV's DIS optical flow.

The live path runs Mask R-CNN on some frames only (keyframes); this module draws every other frame's
masks where the objects are now::

    carrier = Carrier()
    carrier.keyframe(image, masks)      # masks: HxW arrays (bool / 0-255), one per object
    masks = carrier.step(next_image)    # one HxW bool array per keyframe object, None once dropped

Method "carry" (the default): each frame, one dense flow field from the current frame back to the
keyframe (DIS at half size, initialised with the previous frame's field, so motion builds up over
the frames without the mask being re-sampled, and blurred, frame after frame). Every object's
keyframe mask is pulled through it (backward warping: each current pixel looks up where it was).
Near each carried outline the warp is checked against the picture: where the keyframe image pulled
through the same field does not match the current frame (occlusion, disocclusion, a flow error), the
object's own colour model (foreground vs the ring around it on the keyframe) decides instead.
Method "warp" is the plain baseline (previous mask pulled through flow from the previous frame);
"hold" copies the keyframe mask. An object whose carried mask collapses (it left the frame, or the
flow lost it) is dropped until the next keyframe. A keyframe that arrives late (it belongs to a
frame already seen) is carried forward through the frames seen since, which the carrier keeps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

METHODS = ("carry", "warp", "hold")
PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass(frozen=True)
class CarryConfig:
    method: str = "carry"
    scale: float = 0.5           # flow (and, for "carry", the masks) at this fraction of the frame size
    preset: str = "carry"        # DIS preset: ultrafast | fast | medium | carry (medium, stride 4, no refinement)
    band: int = 8                # "carry": pixels (at `scale`) each side of the outline that colour may change
    bins: int = 16               # "carry": colour histogram bins per channel
    alpha: float = 0.1           # "carry": weight of the warp where the warped keyframe does not match the frame
    sigma: float = 20.0          # "carry": grey-level error at which the warp's weight falls to 1/e
    min_area_frac: float = 0.1   # drop an object whose carried mask is below this fraction of its keyframe area
    min_area_px: int = 16        # ... or below this many pixels
    history: int = 64            # frames kept for late keyframes

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown carry method {self.method!r} (one of {', '.join(METHODS)})")
        if self.preset not in (*PRESETS, "carry"):
            raise ValueError(f"unknown DIS preset {self.preset!r} (one of {', '.join(PRESETS)}, carry)")
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"scale must be in [0.05, 1], got {self.scale}")


def make_flow(preset: str) -> cv2.DISOpticalFlow:
    if preset != "carry":
        return cv2.DISOpticalFlow_create(PRESETS[preset])
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setPatchStride(4)
    dis.setVariationalRefinementIterations(0)  # measured: refinement costs time and loses J on DAVIS
    return dis


class _Object:
    __slots__ = ("mask", "lut", "min_area", "alive", "box")

    def __init__(self, mask: np.ndarray, lut: Optional[np.ndarray], min_area: float) -> None:
        self.mask, self.lut, self.min_area, self.alive = mask, lut, min_area, True
        self.box = (0, 0, mask.shape[1], mask.shape[0])  # "carry": (x, y, w, h) of the keyframe mask's support


class Carrier:
    """Carries the masks of one keyframe to later frames; not thread-safe (one per video stream)."""

    def __init__(self, config: CarryConfig | None = None) -> None:
        self.config = config or CarryConfig()
        self._dis = make_flow(self.config.preset) if self.config.method != "hold" else None
        self._history: deque = deque(maxlen=max(1, self.config.history))  # (frame, small BGR, small grey)
        self._objects: list[_Object] = []
        self._size: Optional[tuple[int, int]] = None  # full (w, h) of the keyframe
        # The newest masks as one (objects, H, W) bool array (the returned masks are views of it;
        # a dropped object's plane is empty) and their (objects, 4) xyxy boxes (x2, y2 exclusive).
        self.block: Optional[np.ndarray] = None
        self.boxes: Optional[np.ndarray] = None
        # "carry" works on each object's window (its keyframe box grown by the largest flow and the
        # refinement band), not the whole frame: the same masks, pixel for pixel (the warp of an
        # empty neighbourhood is 0); False runs every object over the whole frame (for tests).
        self._windows = True
        self._next_frame = 0
        self._trust = _trust_lut(self.config.alpha, self.config.sigma)
        b = self.config.band
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * b + 1, 2 * b + 1))

    # -- public API ----------------------------------------------------------------------------
    @property
    def frame(self) -> Optional[int]:
        """Id of the newest frame seen (given to step/keyframe), or None before the first."""
        return self._history[-1][0] if self._history else None

    def keyframe(self, image: np.ndarray, masks, frame: Optional[int] = None,
                 max_steps: Optional[int] = None) -> list[Optional[np.ndarray]]:
        """Start carrying `masks` (one HxW array per object, nonzero = object) found on `image`.

        `frame` None: `image` is a new frame (the newest). `frame` = the id of a frame already given
        to `step`: the result arrived late; the masks are carried forward through the frames seen
        since, and the returned masks are those of the newest frame. `max_steps`: carry forward
        through at most this many of those frames, evenly spaced, always ending on the newest (the
        flow is measured back to the keyframe each time, so skipping frames loses little and a
        live caller catching up on a late result is not held up for one flow per frame).
        """
        masks = _as_masks(masks, image.shape[:2])
        late = frame is not None and self._history and frame <= self._history[-1][0]
        if late:
            ids = [f for f, _, _ in self._history]
            if frame in ids:
                start = ids.index(frame)
                since = list(self._history)[start + 1:]
                _, small, grey = self._history[start]
            else:  # older than the history: carry straight to the newest frame
                since = [self._history[-1]]
                small, grey = self._prepare(image)
        else:
            small, grey = self._prepare(image)
            self._remember(frame, small, grey)
            since = []
        if max_steps is not None and len(since) > max(1, max_steps):
            keep = np.unique(np.round(np.linspace(0, len(since) - 1, max(1, max_steps))).astype(int))
            since = [since[i] for i in keep]
        self._start(image.shape[1::-1], small, grey, masks)
        out = self._full_masks(self._carried_small()) if not since else None
        for _, s, g in since:
            out = self._advance(s, g)
        return out

    def step(self, image: np.ndarray, frame: Optional[int] = None) -> list[Optional[np.ndarray]]:
        """The carried masks on `image` (the next frame), one per keyframe object; None = dropped."""
        small, grey = self._prepare(image)
        self._remember(frame, small, grey)
        if self._size != (image.shape[1], image.shape[0]):  # no keyframe yet, or the frame size changed
            for obj in self._objects:
                obj.alive = False
            return [None] * len(self._objects)
        return self._advance(small, grey)

    # -- internals ------------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.dtype} {image.shape}")
        s = self.config.scale
        h, w = image.shape[:2]
        small = image if s == 1.0 else cv2.resize(image, (max(8, round(w * s)), max(8, round(h * s))),
                                                  interpolation=cv2.INTER_AREA)
        return small, cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)

    def _remember(self, frame: Optional[int], small: np.ndarray, grey: np.ndarray) -> None:
        if frame is None:
            frame = self._next_frame
        self._next_frame = frame + 1
        self._history.append((frame, small, grey))

    def _start(self, size: tuple[int, int], small: np.ndarray, grey: np.ndarray, masks: list[np.ndarray]) -> None:
        cfg = self.config
        self._size = size
        self._key_grey, self._prev_grey, self._flow = grey, grey, None
        hs, ws = grey.shape
        self._grid = np.meshgrid(np.arange(ws, dtype=np.float32), np.arange(hs, dtype=np.float32))
        self._objects = []
        for m in masks:
            area = float(np.count_nonzero(m))
            min_area = max(cfg.min_area_px, cfg.min_area_frac * area)
            if cfg.method == "carry":
                soft = cv2.resize(m.astype(np.float32), (ws, hs), interpolation=cv2.INTER_AREA)
                obj = _Object(soft, _colour_model(small, soft > 0.5, cfg), min_area)
                obj.box = cv2.boundingRect((soft > 0).view(np.uint8))
            elif cfg.method == "warp":
                obj = _Object(m.astype(np.float32), None, min_area)
            else:
                obj = _Object(m.copy(), None, min_area)
            obj.alive = area >= cfg.min_area_px
            self._objects.append(obj)

    def _carried_small(self) -> list[Optional[tuple[int, int, np.ndarray]]]:
        return [(0, 0, o.mask) if o.alive else None for o in self._objects]

    def _advance(self, small: np.ndarray, grey: np.ndarray) -> list[Optional[np.ndarray]]:
        method = self.config.method
        if method == "hold":
            return self._full_masks(self._carried_small())
        if not any(o.alive for o in self._objects):
            self._prev_grey = grey
            return [None] * len(self._objects)
        if method == "warp":
            return self._full_masks(self._advance_warp(grey))
        return self._full_masks(self._advance_carry(small, grey))

    def _advance_warp(self, grey: np.ndarray) -> list[Optional[np.ndarray]]:
        flow = self._dis.calc(grey, self._prev_grey, None)
        self._prev_grey = grey
        w, h = self._size
        if flow.shape[:2] != (h, w):
            fx, fy = np.float32(w / flow.shape[1]), np.float32(h / flow.shape[0])
            flow = cv2.resize(flow, (w, h))
            flow[..., 0] *= fx
            flow[..., 1] *= fy
        gx, gy = _grid(w, h)
        mx, my = gx + flow[..., 0], gy + flow[..., 1]
        for o in self._objects:
            if o.alive:
                o.mask = cv2.remap(o.mask, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return [(0, 0, o.mask) if o.alive else None for o in self._objects]

    def _advance_carry(self, small: np.ndarray, grey: np.ndarray) -> list[Optional[tuple[int, int, np.ndarray]]]:
        cfg = self.config
        # The first flow after a keyframe starts from an explicit zero field: given no initial flow
        # after a call that had one, OpenCV's DIS reuses that stale initial flow, so the carried
        # masks would depend on what was computed before the keyframe.
        init = self._flow if self._flow is not None else np.zeros((*grey.shape, 2), np.float32)
        self._flow = flow = self._dis.calc(grey, self._key_grey, init)
        mx, my = self._grid[0] + flow[..., 0], self._grid[1] + flow[..., 1]
        warped_key = cv2.remap(self._key_grey, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = cv2.blur(cv2.absdiff(warped_key, grey), (5, 5))
        trust = cv2.LUT(err, self._trust)  # uint8: 255 = the warp is right here
        kernel = self._kernel
        hs, ws = grey.shape
        # A pixel further than the largest flow (+ the bilinear taps) from an object's keyframe
        # support warps to exactly 0; the band and the upsampling's 1-pixel pad come on top.
        margin = int(np.ceil(float(np.abs(flow).max()))) + 2 + cfg.band + 2
        out: list[Optional[tuple[int, int, np.ndarray]]] = []
        for o in self._objects:
            if not o.alive:
                out.append(None)
                continue
            x0, y0, x1, y1 = 0, 0, ws, hs
            if self._windows:
                x, y, bw, bh = o.box
                x0, y0, x1, y1 = max(0, x - margin), max(0, y - margin), min(ws, x + bw + margin), min(hs, y + bh + margin)
            soft = cv2.remap(o.mask, mx[y0:y1, x0:x1], my[y0:y1, x0:x1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT)
            out.append((x0, y0, _refine(soft, (x0, y0), small, trust, o.lut, kernel, cfg.band, cfg.bins)))
        return out

    def _full_masks(self, carried: list[Optional[tuple[int, int, np.ndarray]]]) -> list[Optional[np.ndarray]]:
        """Soft masks at working size, each a window (x0, y0, patch) of it -> full-size bool masks
        (views of ``self.block``); objects that collapsed are dropped."""
        w, h = self._size
        hs, ws = self._grid[0].shape if self.config.method == "carry" else (h, w)
        self.block = block = np.zeros((len(self._objects), h, w), bool)
        self.boxes = boxes = np.zeros((len(self._objects), 4), np.float32)
        out: list[Optional[np.ndarray]] = []
        for i, (o, item) in enumerate(zip(self._objects, carried)):
            if item is None or not o.alive:
                out.append(None)
                continue
            x0, y0, soft = item
            if soft.dtype == bool or (hs, ws) == (h, w):  # already at full size
                ph, pw = soft.shape
                block[i, y0:y0 + ph, x0:x0 + pw] = soft if soft.dtype == bool else soft > 0.5
                rect = (y0, y0 + ph, x0, x0 + pw)
            else:
                rect = _upsample(soft, (x0, y0), (ws, hs), block[i])
            ry0, ry1, rx0, rx1 = rect  # nothing was set outside it
            part = block[i, ry0:ry1, rx0:rx1]
            x, y, bw, bh = cv2.boundingRect(part.view(np.uint8)) if part.size else (0, 0, 0, 0)
            if np.count_nonzero(part) < o.min_area:
                o.alive = False
                part[:] = False
                out.append(None)
            else:
                boxes[i] = (rx0 + x, ry0 + y, rx0 + x + bw, ry0 + y + bh)
                out.append(block[i])
        return out


def _as_masks(masks, shape: tuple[int, int]) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    out = []
    for m in masks:
        m = np.asarray(m)
        if m.shape != shape:
            raise ValueError(f"mask of size {m.shape} does not match the image {shape}")
        out.append(m > (127 if m.dtype == np.uint8 and m.max() > 1 else 0))
    return out


_GRIDS: dict = {}


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    if (w, h) not in _GRIDS:
        _GRIDS.clear()
        _GRIDS[(w, h)] = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return _GRIDS[(w, h)]


def _trust_lut(alpha: float, sigma: float) -> np.ndarray:
    e = np.arange(256, dtype=np.float32)
    return np.round(255 * (alpha + (1 - alpha) * np.exp(-e / sigma))).astype(np.uint8)


def _colour_model(small: np.ndarray, fg: np.ndarray, cfg: CarryConfig) -> np.ndarray:
    """P(object | colour) from the keyframe, the object against a ring 2*band wide around it: a flat
    uint8 table (0-255) indexed by _colour_index."""
    fg8 = fg.astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * cfg.band + 1, 4 * cfg.band + 1))
    ring = cv2.dilate(fg8, k) - fg8
    idx = _colour_index(small, cfg.bins)
    n = cfg.bins ** 3
    hf = np.bincount(idx[fg8 > 0], minlength=n) + 0.5
    hb = np.bincount(idx[ring > 0], minlength=n) + 0.5
    hf /= hf.sum()
    hb /= hb.sum()
    return np.round(255 * hf / (hf + hb)).astype(np.uint8)


def _colour_index(bgr: np.ndarray, bins: int) -> np.ndarray:
    """Each pixel's colour-histogram cell. (cv2.calcBackProject is not used: from Python a 3-D
    histogram arrives as a 2-D array with channels, and the look-up comes out wrong.)"""
    q = (bgr.astype(np.int32) * bins) >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def _refine(soft: np.ndarray, at: tuple[int, int], small: np.ndarray, trust: np.ndarray, lut: np.ndarray, kernel,
            band: int, bins: int) -> np.ndarray:
    """Inside a band around the warped outline, mix the warp with the colour model where it is not trusted.

    ``soft`` is the window of the working-size mask whose top-left corner is ``at`` (x, y); the
    band is clipped to the frame (``small``), never to the window (which holds it)."""
    hard = (soft > 0.5).astype(np.uint8)
    x, y, bw, bh = cv2.boundingRect(hard)
    if bw == 0:
        return soft
    ax, ay = at
    hs, ws = small.shape[:2]
    x0, y0 = max(0, ax + x - band), max(0, ay + y - band)  # frame pixels
    x1, y1 = min(ws, ax + x + bw + band), min(hs, ay + y + bh + band)
    roi = (slice(y0, y1), slice(x0, x1))
    local = (slice(y0 - ay, y1 - ay), slice(x0 - ax, x1 - ax))
    h_roi = hard[local]
    in_band = cv2.dilate(h_roi, kernel) != cv2.erode(h_roi, kernel)
    colour = lut[_colour_index(small[roi], bins)]
    a = trust[roi].astype(np.float32) * np.float32(1 / 255)
    fused = a * soft[local] + (1 - a) * (colour.astype(np.float32) * np.float32(1 / 255))
    out = soft.copy()
    out[local] = np.where(in_band, fused, soft[local])
    return out


def _upsample(soft: np.ndarray, at: tuple[int, int], small_size: tuple[int, int],
              full: np.ndarray) -> tuple[int, int, int, int]:
    """A window of a soft mask at working size (top-left ``at``, working size ``small_size`` (w, h))
    -> ``full`` (the full-size bool mask, all False), resizing only the object's box. Returns the
    (y0, y1, x0, x1) rectangle of ``full`` written (nothing is set outside it)."""
    ws, hs = small_size
    h, w = full.shape
    ax, ay = at
    bx, by, bw, bh = cv2.boundingRect((soft > 0.02).astype(np.uint8))
    if bw == 0:
        return (0, 0, 0, 0)
    x, y = ax + bx, ay + by  # working-size pixels of the frame
    sx, sy = w / ws, h / hs
    # Whole working pixels around the box, mapped to full-size pixel edges.
    x0, y0 = max(0, x - 1), max(0, y - 1)
    x1, y1 = min(ws, x + bw + 1), min(hs, y + bh + 1)
    fx0, fy0 = int(round(x0 * sx)), int(round(y0 * sy))
    fx1, fy1 = int(round(x1 * sx)), int(round(y1 * sy))
    if (x0, y0, x1, y1) == (0, 0, ws, hs):  # the window is the whole frame
        full[:] = cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        return (0, h, 0, w)
    # Resize the padded box with the same sampling grid as a whole-frame resize would use.
    gx = (np.arange(fx0, fx1, dtype=np.float32) + 0.5) / np.float32(sx) - 0.5 - x0
    gy = (np.arange(fy0, fy1, dtype=np.float32) + 0.5) / np.float32(sy) - 0.5 - y0
    mx, my = np.meshgrid(gx, gy)
    patch = cv2.remap(np.ascontiguousarray(soft[y0 - ay:y1 - ay, x0 - ax:x1 - ax]), mx, my, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)
    full[fy0:fy1, fx0:fx1] = patch > 0.5
    return (fy0, fy1, fx0, fx1)
