"""Masks carried between keyframes (streamcap.carry) on synthetic moving shapes with exact masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamcap.carry import Carrier, CarryConfig

W, H, SIDE = 240, 176, 56


def texture(h: int, w: int, seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    """Smooth random texture (something for the flow to hold on to), in a colour range of its own."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 4.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.clip(np.array(tint, np.float32) + 120 * noise, 0, 255).astype(np.uint8)


BACKGROUND = texture(H, W, seed=1, tint=(90, 100, 70))
PATCHES = [texture(SIDE, SIDE, seed=2, tint=(10, 20, 100)), texture(SIDE, SIDE, seed=3, tint=(120, 30, 10))]


def scene(positions: list[tuple[int, int]], background: np.ndarray = BACKGROUND) -> tuple[np.ndarray, list[np.ndarray]]:
    """A frame with one textured square per (x, y) top-left corner (may lie partly outside), and
    each square's exact mask (what is visible of it)."""
    img = background.copy()
    masks = []
    for k, (x, y) in enumerate(positions):
        m = np.zeros((H, W), bool)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + SIDE, W), min(y + SIDE, H)
        if x1 > x0 and y1 > y0:
            img[y0:y1, x0:x1] = PATCHES[k % 2][y0 - y:y1 - y, x0 - x:x1 - x]
            m[y0:y1, x0:x1] = True
        masks.append(m)
    return img, masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def square_path(t: int) -> list[tuple[int, int]]:
    """Two squares: one moving right and down 3 px and 1 px a frame, one moving left 2 px a frame."""
    return [(20 + 3 * t, 30 + t), (170 - 2 * t, 100)]


def test_moving_squares_are_carried_to_their_exact_masks():
    carrier = Carrier()
    img0, masks0 = scene(square_path(0))
    first = carrier.keyframe(img0, masks0)
    assert [iou(a, b) for a, b in zip(first, masks0)] == [pytest.approx(1.0, abs=0.02)] * 2
    for t in range(1, 12):
        img, truth = scene(square_path(t))
        carried = carrier.step(img)
        assert len(carried) == 2
        for k in range(2):
            assert carried[k] is not None and carried[k].shape == (H, W) and carried[k].dtype == bool
            assert iou(carried[k], truth[k]) > 0.9, (t, k)
    # Holding the keyframe masks would be far off by now (11 frames: 33 px and 22 px away).
    assert iou(masks0[0], truth[0]) < 0.3 and iou(masks0[1], truth[1]) < 0.5


def test_plain_warp_follows_the_squares_over_a_few_frames():
    carrier = Carrier(CarryConfig(method="warp", preset="medium"))
    carrier.keyframe(*scene(square_path(0)))
    for t in range(1, 5):
        img, truth = scene(square_path(t))
        carried = carrier.step(img)
        assert all(iou(carried[k], truth[k]) > 0.8 for k in range(2)), t


def test_hold_copies_the_keyframe_masks():
    carrier = Carrier(CarryConfig(method="hold"))
    img0, masks0 = scene(square_path(0))
    carrier.keyframe(img0, masks0)
    img, _ = scene(square_path(5))
    assert all(np.array_equal(a, b) for a, b in zip(carrier.step(img), masks0))


def test_late_keyframe_lands_on_the_objects_current_position():
    carrier = Carrier()
    frames = [scene(square_path(t)) for t in range(13)]
    for t in range(13):
        assert carrier.step(frames[t][0], frame=100 + t) == []  # no keyframe yet: nothing to carry
    # The segmenter's result for frame 102 arrives when frame 112 is the newest.
    img2, masks2 = frames[2]
    now = carrier.keyframe(img2, masks2, frame=102)
    truth = frames[12][1]
    for k in range(2):
        assert iou(now[k], truth[k]) > 0.9
        assert iou(masks2[k], truth[k]) < 0.5  # where it was is not where it is
    # and carrying goes on from there
    img13, truth13 = scene(square_path(13))
    nxt = carrier.step(img13, frame=113)
    assert all(iou(nxt[k], truth13[k]) > 0.9 for k in range(2))


def test_late_keyframe_with_max_steps_skips_frames_and_still_lands_on_the_current_position():
    frames = [scene(square_path(t)) for t in range(13)]
    full, few = Carrier(), Carrier()
    for t in range(13):
        full.step(frames[t][0], frame=t)
        few.step(frames[t][0], frame=t)
    calls = []
    calc = few._dis.calc
    few._dis = type("Counting", (), {"calc": lambda self, *a: calls.append(1) or calc(*a)})()
    now = few.keyframe(*frames[2], frame=2, max_steps=3)
    assert len(calls) == 3  # frames 3, 7 (or 8) and 12 of the ten seen since, not all ten
    ref = full.keyframe(*frames[2], frame=2)
    for k in range(2):
        assert iou(now[k], frames[12][1][k]) > 0.9 and iou(ref[k], frames[12][1][k]) > 0.9


def test_late_keyframe_older_than_the_history_is_carried_straight_to_the_newest_frame():
    carrier = Carrier(CarryConfig(history=3))
    frames = [scene(square_path(t)) for t in range(8)]
    for t, (img, _) in enumerate(frames):
        carrier.step(img, frame=t)
    img2, masks2 = frames[2]
    now = carrier.keyframe(img2, masks2, frame=2)  # frame 2 is no longer kept
    assert all(iou(now[k], frames[7][1][k]) > 0.9 for k in range(2))


def test_object_leaving_the_frame_is_dropped_until_the_next_keyframe():
    carrier = Carrier()
    road = BACKGROUND.copy()
    road[:, 150:] = (150, 160, 120)  # it drives off over a plain stretch (see README: textured exits)

    def path(t):  # 8 px a frame to the right: fully out of the 240 px frame from frame 8 on
        return [(180 + 8 * t, 50)]

    img0, masks0 = scene(path(0), road)
    carrier.keyframe(img0, masks0)
    img, truth = scene(path(1), road)
    assert iou(carrier.step(img)[0], truth[0]) > 0.9
    img, truth = scene(path(3), road)  # 36 of 56 columns still visible
    assert iou(carrier.step(img)[0], truth[0]) > 0.9
    results = [carrier.step(scene(path(t), road)[0])[0] for t in range(4, 12)]
    assert results[-1] is None
    first_none = next(i for i, r in enumerate(results) if r is None)
    assert all(r is None for r in results[first_none:])  # dropped stays dropped
    img_back, masks_back = scene([(40, 50)], road)
    again = carrier.keyframe(img_back, masks_back)
    assert iou(again[0], masks_back[0]) > 0.95


def test_a_mask_that_collapses_is_dropped():
    carrier = Carrier()
    img0, masks0 = scene(square_path(0))
    tiny = np.zeros((H, W), bool)
    tiny[0:2, 0:3] = True  # 6 px: below min_area_px, dropped at once
    assert carrier.keyframe(img0, [masks0[0], tiny])[1] is None
    assert carrier.step(scene(square_path(1))[0])[1] is None


def test_frame_size_change_drops_every_object():
    carrier = Carrier()
    img0, masks0 = scene(square_path(0))
    carrier.keyframe(img0, masks0)
    assert carrier.step(cv2.resize(img0, (W // 2, H // 2))) == [None, None]


def test_masks_as_uint8_or_stacked_array_are_accepted_and_checked():
    carrier = Carrier()
    img0, masks0 = scene(square_path(0))
    stacked = np.stack(masks0).astype(np.uint8) * 255
    out = carrier.keyframe(img0, stacked)
    assert [iou(a, b) for a, b in zip(out, masks0)] == [pytest.approx(1.0, abs=0.02)] * 2
    with pytest.raises(ValueError, match="does not match"):
        carrier.keyframe(img0, [np.zeros((H + 1, W), bool)])
    with pytest.raises(ValueError, match="unknown carry method"):
        CarryConfig(method="magic")


def test_windowed_carry_gives_the_same_masks_and_boxes_as_whole_frame_carry():
    # Each object is warped and refined on its own window (keyframe box + largest flow + band):
    # pixel for pixel what the whole-frame warp gives, for squares in the middle, at the borders,
    # leaving the frame, and for a large jump.
    def path(t: int) -> list[tuple[int, int]]:
        return [(20 + 3 * t, 30 + t), (170 - 2 * t, 100), (-10 + t, 5), (200 + 4 * t, 130 - 3 * t), (100, 60 + 2 * t)]

    frames = [scene(path(t)) for t in range(10)] + [scene(path(25))]  # the last: a jump of 15 frames
    runs = []
    for windows in (True, False):
        carrier = Carrier()
        carrier._windows = windows
        got = [carrier.keyframe(*frames[0])]
        for img, _ in frames[1:]:
            got.append(carrier.step(img))
            got.append(carrier.boxes.copy())
        runs.append(got)
    alive = 0
    for a, b in zip(*runs):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b)
            continue
        assert [m is None for m in a] == [m is None for m in b]
        for x, y in zip(a, b):
            if x is not None:
                alive += 1
                assert np.array_equal(x, y)
    assert alive > 40  # most objects are carried through most frames
