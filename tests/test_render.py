"""Renderer: exactly the masked pixels change, stable class colours, tags, banner, HUD."""

from __future__ import annotations

import numpy as np
import pytest

from streamcap.render import PALETTE, Renderer, class_color, draw_detections, wrap_text
from streamcap.types import Caption, Detections, Frame, FrameResult

NAMES = ["__background__", "person", "bicycle", "car"]
H, W = 120, 160


def _result(image, det=None, caption=None) -> FrameResult:
    return FrameResult(frame=Frame("t", 0, 0.0, 0.0, image), detections=det, caption=caption)


def _det() -> Detections:
    masks = np.zeros((3, H, W), bool)
    masks[0, 10:40, 10:50] = True  # person
    masks[1, 30:60, 40:90] = True  # person, overlapping the first
    masks[2, 70:100, 100:150] = True  # car
    return Detections(
        boxes=np.array([[10, 10, 50, 40], [40, 30, 90, 60], [100, 70, 150, 100]], np.float32),
        scores=np.array([0.9, 0.8, 0.7], np.float32),
        labels=np.array([1, 1, 3]),
        names=NAMES,
        masks=masks,
    )


def _masks_only(**kw) -> Renderer:
    return Renderer(show_boxes=False, show_labels=False, banner=False, hud=False, **kw)


def test_masks_change_exactly_the_masked_pixels():
    image = np.full((H, W, 3), 128, np.uint8)
    det = _det()
    out = _masks_only(alpha=0.5).annotate(image, _result(image, det))
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all()  # input untouched
    changed = (out != image).any(axis=2)
    np.testing.assert_array_equal(changed, det.masks.any(axis=0))
    # one colour per class, blended once even where two masks of the class overlap
    person = np.array(class_color(1), np.float32)
    expected = (128 * 0.5 + person * 0.5 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[35, 45], expected)  # in both person masks
    np.testing.assert_array_equal(out[15, 15], expected)
    car = (128 * 0.5 + np.array(class_color(3), np.float32) * 0.5 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[80, 120], car)
    assert class_color(1) != class_color(3) and class_color(1 + len(PALETTE)) == class_color(1)


def test_masks_of_another_size_and_scaled_frames():
    image = np.full((H, W, 3), 128, np.uint8)
    det = _det()
    half = Detections(det.boxes, det.scores, det.labels, det.names, det.masks[:, ::2, ::2])  # draw_size masks
    out = _masks_only().annotate(image, _result(image, half))
    changed = (out != image).any(axis=2)
    assert abs(int(changed.sum()) - int(det.masks.any(axis=0).sum())) < 0.05 * det.masks.any(axis=0).sum()
    # drawing on a half-size copy of the frame scales boxes from frame pixels
    small = np.full((H // 2, W // 2, 3), 128, np.uint8)
    res = _result(image, Detections(det.boxes[2:], det.scores[2:], det.labels[2:], NAMES, None))
    out = Renderer(show_labels=False, banner=False, hud=False, line_width=1).annotate(small, res)
    ys, xs = np.nonzero((out != small).any(axis=2))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (50, 75, 35, 50)


def test_label_tags_stay_inside_and_do_not_overlap():
    image = np.zeros((H, W, 3), np.uint8)
    boxes = np.array([[0, 0, 60, 40], [0, 0, 60, 40], [120, 100, 160, 120]], np.float32)  # same box twice
    det = Detections(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 2, 3]), NAMES, None)
    r = Renderer(banner=True, hud=False)
    rects = r.draw_labels(image.copy(), det)
    bottom = H - r.banner_height()
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= bottom
    assert not any(
        a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for i, a in enumerate(rects) for b in rects[i + 1 :]
    )


def test_banner_draws_caption_at_the_bottom_only():
    image = np.full((H * 2, W * 2, 3), 200, np.uint8)
    r = Renderer(hud=False)
    bh = r.banner_height()
    assert 0 < bh < image.shape[0] // 2
    empty = r.annotate(image, _result(image))
    assert (empty[:-bh] == 200).all() and (empty[-bh:] < 200).all()  # reserved band, darkened
    text = "a man riding a bicycle down a street next to a parked red car on a sunny day"
    out = r.annotate(image, _result(image, caption=Caption(text, text, 0.9, 0)))
    assert (out[:-bh] == 200).all()
    assert (out[-bh:] > 200).any()  # white text drawn on the dark band
    assert len(wrap_text(text, 300, 0.7, 1)) >= 2


def test_hud_top_left_only_with_stats():
    image = np.full((H * 2, W * 2, 3), 200, np.uint8)
    r = Renderer(banner=False, hud=True)
    assert (r.annotate(image, _result(image)) == 200).all()
    out = r.annotate(image, _result(image), {"fps": 9.87, "latency_ms": 120.4, "dropped": 3})
    ys, xs = np.nonzero((out != image).any(axis=2))
    assert ys.min() == 0 and xs.min() == 0 and ys.max() < image.shape[0] // 2 and xs.max() < image.shape[1] // 2


def test_draw_detections_api():
    image = np.full((H, W, 3), 128, np.uint8)
    det = _det()
    out = draw_detections(image, det, show_boxes=False, show_labels=False)
    np.testing.assert_array_equal((out != image).any(axis=2), det.masks.any(axis=0))
    assert (draw_detections(image, None) == image).all()
    with pytest.raises(ValueError):
        Renderer(alpha=2.0)


def test_notice_tags_the_top_right_corner_only():
    image = np.full((H, W, 3), 128, np.uint8)
    r = Renderer(banner=False, hud=False)
    plain = r.annotate(image, _result(image))
    tagged = r.annotate(image, _result(image), notice="untrained segmenter")
    changed = np.argwhere((tagged != plain).any(axis=2))
    assert len(changed) and changed[:, 0].max() < 30 and changed[:, 1].max() == W - 1  # a top-right band
    assert tuple(tagged[2, W - 2]) == (0, 191, 255)  # the amber tag
    assert (plain == image).all()


def test_track_ids_lead_the_label_tags():
    r = Renderer(banner=False, hud=False)
    det = _det()
    assert r._label_text(det, 2, [4, 5, 9]) == "#9 car 0.70"
    assert r._label_text(det, 2) == "car 0.70"
    image = np.zeros((H, W, 3), np.uint8)
    with_ids = r.annotate(image, FrameResult(Frame("t", 0, 0.0, 0.0, image), det, extras={"track_ids": [4, 5, 9]}))
    without = r.annotate(image, _result(image, det))
    assert not np.array_equal(with_ids, without)  # the tags differ, nothing else does
    masks_and_boxes = Renderer(show_labels=False, banner=False, hud=False)
    assert np.array_equal(masks_and_boxes.annotate(image, _result(image, det)),
                          masks_and_boxes.annotate(image, FrameResult(Frame("t", 0, 0.0, 0.0, image), det,
                                                                      extras={"track_ids": [4, 5, 9]})))


def test_in_place_draws_on_the_callers_own_copy_and_never_on_a_view():
    image = np.full((H * 2, W * 2, 3), 200, np.uint8)
    r = Renderer(hud=False)
    bh = r.banner_height()
    mine = image.copy()
    out = r.annotate(mine, _result(mine), in_place=True)
    assert out is mine and (mine[-bh:] == 70).all() and (mine[:-bh] == 200).all()  # 200 * 0.35, rounded
    view = image[:, :W]  # not contiguous: copied, the source untouched
    out = r.annotate(view, _result(view), in_place=True)
    assert out is not view and (image == 200).all() and (out[-bh:] == 70).all()
    copied = r.annotate(image, _result(image))  # the default: a new image
    assert copied is not image and (image == 200).all() and (copied[-bh:] == 70).all()
