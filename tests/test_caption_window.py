"""Captions from the window: frame sampling, pooling with the scene-change cue, comparing
captions by meaning, and the pipeline's caption worker handing frames and detections over."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import MEDIA, REPO

from streamcap.caption.api import BUNDLED_CHECKPOINT, Captioner
from streamcap.caption.smoothing import CaptionSmoother, FrameWindow, WordVectors, soft_similarity
from streamcap.captioning import detection_labels
from streamcap.types import Detections, Frame


def test_frame_window_samples_evenly_since_the_last_take_and_keeps_the_newest():
    w = FrameWindow(2, 0.5)
    w.take(0.0)
    kept = [t for t in np.arange(0.1, 2.0, 0.1).round(1) if w.wants(t) and (w.add(t, t) or True)]
    assert kept == [0.5, 1.0, 1.5]
    assert w.take(2.0) == [1.0, 1.5]  # at most size, the oldest fell out
    assert w.take(2.1) == [] and not w.wants(2.2) and w.wants(2.6)
    with pytest.raises(ValueError):
        FrameWindow(0, 1.0)


def test_similarity_by_meaning_matches_close_words():
    vec = {"street": np.array([1.0, 0.0]), "sidewalk": np.array([0.8, 0.6]), "horse": np.array([0.0, 1.0])}
    assert soft_similarity("a man on the street", "a man on the sidewalk", vec) == pytest.approx(0.875)
    assert soft_similarity("a man on the street", "a man on the sidewalk", {}) == 0.5  # exact words only
    assert soft_similarity("a horse", "the street", vec) == 0.0
    assert WordVectors(vec)("", "") == 1.0


def test_scene_change_cue_shows_a_different_caption_at_once_but_not_a_rewording():
    s = CaptionSmoother(confident_margin=None)
    s.update("a man walks down the street", -1.0, 0.0)
    assert s.update("a man walking on a street", -1.0, 2.0, scene_change=True) == ("a man walks down the street", False)
    assert s.update("two dogs run in a field", -3.0, 4.0, scene_change=True) == ("two dogs run in a field", True)
    held = CaptionSmoother(confident_margin=None, min_hold_s=5.0)
    held.update("a man walks down the street", -1.0, 0.0)
    assert held.update("two dogs run in a field", -1.0, 2.0, scene_change=True)[1] is False


def test_detection_labels_of_a_frame():
    det = Detections(boxes=np.zeros((3, 4), np.float32), scores=np.array([0.9, 0.3, 0.6], np.float32),
                     labels=np.array([2, 1, 0]), names=["person", "dog", "horse"])
    assert detection_labels(det) == ["horse", "person"]
    assert detection_labels(None) is None and detection_labels(det[det.scores < 0.5]) is None


@pytest.fixture(scope="module")
def bundled():
    if not BUNDLED_CHECKPOINT.is_file():
        pytest.skip("bundled caption model not installed")
    torch.set_num_threads(1)
    return Captioner(device="cpu", beam=3)


def frame(path, index=0):
    return Frame("cam", index, index / 10, 0.0, cv2.imread(str(path)))


def test_window_leaves_out_frames_of_another_scene_and_flags_the_cut(bundled):
    street = [bundled.thumbnail(frame(REPO / "samples" / "messi5.jpg"))] * 2
    horses = bundled.thumbnail(frame(MEDIA / "horses.jpg"))
    bundled.reset()
    first = bundled.caption_window(street, "cam")
    assert not first.scene_change  # nothing before it
    cut = bundled.caption_window(street + [horses], "cam")
    alone = bundled.caption_images([horses])[0]
    # the window is the horses frame alone: same words, same score (up to float rounding: the
    # pooled path sums one frame's features in another order than the single-image path)
    assert cut.scene_change and cut.text == alone.text
    assert cut.score == pytest.approx(alone.score, abs=1e-5)
    again = bundled.caption_window([horses, horses], "cam")
    assert not again.scene_change and again.text == alone.text
    assert bundled.caption_window([horses], "other").scene_change is False  # per source


def test_meaning_treats_rewordings_of_the_street_as_one_scene(bundled):
    sim = bundled.word_vectors()
    assert sim("a group of people stand on a sidewalk", "a group of people are walking down a street") >= 0.5
    assert sim("a group of people stand on a sidewalk", "two dogs are walking through a field") < 0.5


def test_words_alone_need_still_runs_to_change_an_unchanged_picture():
    same, moved = np.array([1.0, 0.0]), np.array([0.6, 0.8])  # cosine 1 / 0.6 to the shown picture
    seq = ["a man walks down the street"] + ["a person on a skateboard in the air"] * 4

    def changes(picture, still_runs=4):
        s = CaptionSmoother(confirm_runs=2, confident_margin=None, still_runs=still_runs)
        out = [s.update(text, -1.0, 2.0 * i, picture=same if i == 0 else picture) for i, text in enumerate(seq)]
        return [i for i, (_, changed) in enumerate(out) if changed]

    assert changes(same) == [0, 4]  # the same picture: 4 runs must agree
    assert changes(moved) == [0, 2]  # the picture moved: 2 runs confirm, as without pictures
    assert changes(same, still_runs=None) == [0, 2]
    assert changes(None) == [0, 2]
