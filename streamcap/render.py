"""Overlays: translucent masks, boxes, label tags, a caption banner and a statistics HUD.

``Renderer(style...)`` fixes the style once; ``annotate(image, result, stats)`` returns a new
image (the input is never modified). Everything is drawn in the pixels of the image given:
boxes (frame pixels) are scaled when the image is not the frame's size, and masks of another
size (a segmenter ``draw_size``) are resized to it.

Masks are blended with one numpy operation per class over the union of that class's masks,
restricted to the union's bounding box. Colours come from a fixed palette indexed by class
id, so a class keeps its colour across frames and runs.

The caption banner is a band at the bottom of the image, inside it (the output has the input's
size, as video writers need), drawn whenever ``banner=True`` even before the first caption,
so the layout does not jump; label tags are kept above it. A ``notice`` (e.g. "untrained
segmenter" when the segmenter has random weights) is a small tag in the top-right corner.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from streamcap.types import Detections, Frame, FrameResult

FONT = cv2.FONT_HERSHEY_SIMPLEX

# 20 well separated colours (BGR), indexed by class id modulo 20.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)


def class_color(class_id: int, palette: Sequence[tuple[int, int, int]] = PALETTE) -> tuple[int, int, int]:
    """The stable BGR colour of a class id."""
    return tuple(int(c) for c in palette[int(class_id) % len(palette)])  # type: ignore[return-value]


def _text_color(bg: Sequence[int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (BGR luma)."""
    luma = 0.114 * bg[0] + 0.587 * bg[1] + 0.299 * bg[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _darken(region: np.ndarray, opacity: float) -> None:
    """In place: blend a region towards black (a translucent dark background). One OpenCV pass
    (uint8 in, uint8 out, rounded): a float32 round trip cost 20-30x more CPU per frame."""
    if region.size == 0:
        return
    if region.flags.c_contiguous or (region.ndim == 3 and region.strides[1:] == (region.shape[2], 1)):
        cv2.convertScaleAbs(region, dst=region, alpha=1.0 - opacity)  # rows may be a view's, pixels packed
    else:
        region[:] = cv2.convertScaleAbs(region, alpha=1.0 - opacity)


def wrap_text(text: str, max_width: int, scale: float, thickness: int) -> list[str]:
    """Greedy word wrap so each line's rendered width fits ``max_width`` pixels."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if cv2.getTextSize(trial, FONT, scale, thickness)[0][0] <= max_width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


class Renderer:
    """Draws a ``FrameResult`` onto its image; the style is fixed at construction.

    alpha        mask opacity (0..1)
    line_width   box outline width in pixels
    font_scale   OpenCV font scale of label tags and HUD (the banner uses banner_scale)
    show_boxes / show_labels / show_masks / show_scores   what to draw per detection
    banner       reserve a caption band at the bottom and draw ``result.caption.text`` there
    banner_lines lines of caption text the band holds (longer text ends with "...")
    banner_scale font scale of the caption (default 1.4 * font_scale)
    hud          draw ``stats`` (key: value lines) top-left on a translucent panel
    palette      BGR colours indexed by class id
    """

    def __init__(
        self,
        *,
        alpha: float = 0.45,
        line_width: int = 2,
        font_scale: float = 0.5,
        show_boxes: bool = True,
        show_labels: bool = True,
        show_masks: bool = True,
        show_scores: bool = True,
        banner: bool = True,
        banner_lines: int = 2,
        banner_scale: float | None = None,
        hud: bool = True,
        palette: Sequence[tuple[int, int, int]] = PALETTE,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within 0..1, got {alpha}")
        self.alpha = float(alpha)
        self.line_width = max(1, int(line_width))
        self.font_scale = float(font_scale)
        self.thickness = max(1, round(self.font_scale * 2))
        self.show_boxes = show_boxes
        self.show_labels = show_labels
        self.show_masks = show_masks
        self.show_scores = show_scores
        self.banner = banner
        self.banner_lines = max(1, int(banner_lines))
        self.banner_scale = float(banner_scale) if banner_scale else self.font_scale * 1.4
        self.banner_thickness = max(1, round(self.banner_scale * 2))
        self.hud = hud
        self.palette = tuple(tuple(int(v) for v in c) for c in palette)
        (_, th), base = cv2.getTextSize("Ag", FONT, self.banner_scale, self.banner_thickness)
        self._banner_line_h = th + base + 4
        self._banner_pad = 6

    # -- layout -------------------------------------------------------------------------------
    def banner_height(self) -> int:
        """Pixel height of the reserved caption band (0 when ``banner=False``)."""
        if not self.banner:
            return 0
        return self.banner_lines * self._banner_line_h + 2 * self._banner_pad

    # -- entry point --------------------------------------------------------------------------
    def annotate(
        self, image_bgr: np.ndarray, result: FrameResult, stats: Mapping[str, Any] | None = None,
        notice: str | None = None, in_place: bool = False,
    ) -> np.ndarray:
        """A new BGR image with the result drawn on it; ``image_bgr`` is left untouched, unless
        ``in_place`` (the caller owns a contiguous image, such as a scaled copy: drawn on and
        returned, no copy).

        ``notice``: a short warning tagged top-right on the frame (what a viewer of the video
        must know, such as an untrained model)."""
        if in_place and image_bgr.flags.c_contiguous and image_bgr.flags.writeable:
            out = image_bgr
        else:
            out = np.ascontiguousarray(image_bgr).copy()
        det = result.detections
        if det is not None and len(det):
            det = self._to_image_coords(det, result.frame, out.shape[:2])
            if self.show_masks and det.masks is not None:
                self.draw_masks(out, det)
            if self.show_boxes:
                self.draw_boxes(out, det)
            if self.show_labels:
                self.draw_labels(out, det, result.extras.get("track_ids"))
        if self.banner:
            self.draw_banner(out, result.caption.text if result.caption is not None else "")
        if self.hud and stats:
            self.draw_hud(out, stats)
        if notice:
            self.draw_notice(out, notice)
        return out

    def _to_image_coords(self, det: Detections, frame: Frame | None, hw: tuple[int, int]) -> Detections:
        h, w = hw
        boxes = det.boxes
        if frame is not None and frame.image is not None:
            fh, fw = frame.image.shape[:2]
            if (fh, fw) != (h, w):
                boxes = boxes * np.array([w / fw, h / fh, w / fw, h / fh], np.float32)
        masks = det.masks
        if masks is not None and masks.shape[1:] != (h, w):
            masks = np.stack(
                [cv2.resize(m.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in masks]
            ).astype(bool) if len(masks) else np.zeros((0, h, w), bool)
        return Detections(boxes=boxes, scores=det.scores, labels=det.labels, names=det.names, masks=masks)

    # -- layers -------------------------------------------------------------------------------
    def draw_masks(self, img: np.ndarray, det: Detections) -> None:
        """In place: blend each class's colour over the union of its masks."""
        assert det.masks is not None
        a = self.alpha
        for cls in np.unique(det.labels):
            union = det.masks[det.labels == cls].any(axis=0)  # (H, W) bool
            rows = np.flatnonzero(union.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(union.any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            region = img[y0:y1, x0:x1]
            m = union[y0:y1, x0:x1]
            color = np.array(class_color(int(cls), self.palette), np.float32)
            region[m] = (region[m].astype(np.float32) * (1.0 - a) + color * a + 0.5).astype(np.uint8)

    def draw_boxes(self, img: np.ndarray, det: Detections) -> None:
        for box, cls in zip(det.boxes, det.labels):
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(img, (x1, y1), (x2, y2), class_color(int(cls), self.palette), self.line_width)

    def _label_text(self, det: Detections, i: int, track_ids: Sequence[int] | None = None) -> str:
        name = det.class_names[i]
        if track_ids is not None and i < len(track_ids):
            name = f"#{int(track_ids[i])} {name}"
        return f"{name} {float(det.scores[i]):.2f}" if self.show_scores else name

    def draw_labels(self, img: np.ndarray, det: Detections,
                    track_ids: Sequence[int] | None = None) -> list[tuple[int, int, int, int]]:
        """Label tags inside the image and above the banner; greedy, best score first.
        ``track_ids`` (one per detection): each tag starts with its object's id, ``#7 person``.

        Each tag tries, in order: above the box, inside its top-left, below it, inside its
        bottom-left; the first spot that overlaps no placed tag wins (else the first spot).
        Returns the placed tag rectangles (x1, y1, x2, y2).
        """
        h, w = img.shape[:2]
        bottom = max(1, h - self.banner_height())
        placed: list[tuple[int, int, int, int]] = []
        for i in np.argsort(-det.scores, kind="stable"):
            text = self._label_text(det, int(i), track_ids)
            (tw, th), base = cv2.getTextSize(text, FONT, self.font_scale, self.thickness)
            tag_w, tag_h = tw + 6, th + base + 4
            x1, y1, x2, y2 = (int(round(float(v))) for v in det.boxes[i])
            spots = [(x1, y1 - tag_h), (x1, y1), (x1, y2), (x1, y2 - tag_h)]
            rects = []
            for sx, sy in spots:
                sx = min(max(sx, 0), max(w - tag_w, 0))
                sy = min(max(sy, 0), max(bottom - tag_h, 0))
                rects.append((sx, sy, sx + tag_w, sy + tag_h))
            rect = next((r for r in rects if not any(_overlaps(r, p) for p in placed)), rects[0])
            placed.append(rect)
            color = class_color(int(det.labels[i]), self.palette)
            cv2.rectangle(img, rect[:2], (rect[2] - 1, rect[3] - 1), color, -1)
            cv2.putText(
                img, text, (rect[0] + 3, rect[3] - base - 2), FONT, self.font_scale,
                _text_color(color), self.thickness, cv2.LINE_AA,
            )
        return placed

    def draw_banner(self, img: np.ndarray, text: str) -> None:
        """The bottom band: dark translucent background, wrapped white caption text."""
        h, w = img.shape[:2]
        bh = min(self.banner_height(), h)
        _darken(img[h - bh :], 0.65)
        if not text:
            return
        pad = self._banner_pad
        lines = wrap_text(text, w - 2 * pad, self.banner_scale, self.banner_thickness)
        if len(lines) > self.banner_lines:
            lines = lines[: self.banner_lines]
            lines[-1] = lines[-1].rstrip(" .,") + "..."
        for k, line in enumerate(lines):
            y = h - bh + pad + (k + 1) * self._banner_line_h - 4
            cv2.putText(img, line, (pad, y), FONT, self.banner_scale, (255, 255, 255), self.banner_thickness, cv2.LINE_AA)

    def draw_hud(self, img: np.ndarray, stats: Mapping[str, Any]) -> None:
        """Top-left translucent panel with one ``key: value`` line per entry."""
        scale = self.font_scale * 0.9
        thick = 1
        lines = [f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in stats.items()]
        sizes = [cv2.getTextSize(s, FONT, scale, thick) for s in lines]
        line_h = max(th + base for (_, th), base in sizes) + 4
        panel_w = min(max(tw for (tw, _), _ in sizes) + 10, img.shape[1])
        panel_h = min(line_h * len(lines) + 6, img.shape[0])
        _darken(img[:panel_h, :panel_w], 0.55)
        for k, s in enumerate(lines):
            cv2.putText(img, s, (5, 3 + (k + 1) * line_h - 4), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


    def draw_notice(self, img: np.ndarray, text: str) -> None:
        """A small black-on-amber tag in the top-right corner."""
        scale = self.font_scale * 0.9
        (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
        h, w = img.shape[:2]
        x1, y2 = max(0, w - tw - 8), min(h, th + base + 6)
        cv2.rectangle(img, (x1, 0), (w - 1, y2 - 1), (0, 191, 255), -1)
        cv2.putText(img, text, (x1 + 4, y2 - base - 3), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: Detections | None, **style: Any) -> np.ndarray:
    """Draw masks, boxes and labels on a copy of a BGR image (no banner, no HUD by default).

    >>> out = draw_detections(image, detections, alpha=0.5, show_scores=False)
    """
    style.setdefault("banner", False)
    style.setdefault("hud", False)
    frame = Frame(source="", index=0, pts_s=0.0, wall_ts=0.0, image=image)
    return Renderer(**style).annotate(image, FrameResult(frame=frame, detections=detections))
