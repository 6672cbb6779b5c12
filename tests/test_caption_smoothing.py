"""CaptionSmoother and CaptionSchedule: pure unit tests on synthetic sequences."""

from __future__ import annotations

import pytest

from streamcap.caption.smoothing import CaptionSchedule, CaptionSmoother, similarity

STREET = ["a man walks down the street", "a man is walking on a street",
          "a man walking down a street", "man walks on the street"]


def run(smoother, seq, dt=2.0):
    return [smoother.update(text, score, i * dt) for i, (text, score) in enumerate(seq)]


def test_similarity_treats_rewordings_as_same_and_scenes_as_different():
    assert similarity(STREET[0], STREET[1]) >= 0.5
    assert similarity("two dogs play in the grass", "a dog is playing on grass") >= 0.5
    assert similarity(STREET[0], "a brown horse grazes in a field") == 0.0
    assert similarity("", "") == 1.0


def test_rewordings_and_single_outliers_never_change_the_shown_caption():
    s = CaptionSmoother(confirm_runs=2, confident_margin=None)
    seq = [(STREET[i % 4], -1.0) for i in range(20)]
    seq[7] = ("a group of people standing in front of a building", -1.2)  # one-off outlier
    seq[13] = ("a woman rides a bicycle", -1.1)
    out = run(s, seq)
    assert out[0] == (STREET[0], True)
    assert [changed for _, changed in out[1:]] == [False] * 19
    assert {shown for shown, _ in out} == {STREET[0]} and s.changes == 1


def test_alternating_noise_is_suppressed():
    s = CaptionSmoother(confirm_runs=3, confident_margin=None)
    noise = ["a dog runs on grass", "a boy in a red shirt", "a car parked outside"]
    out = run(s, [(STREET[0], -1)] + [(noise[i % 3], -1.0) for i in range(12)])
    assert s.changes == 1 and all(shown == STREET[0] for shown, _ in out)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_real_change_gets_through_within_k_runs_with_best_wording(k):
    s = CaptionSmoother(confirm_runs=k, confident_margin=None)
    horses = [("a horse in a field", -1.5), ("two horses stand in a field", -0.7),
              ("horses standing in the field", -1.0)]
    out = run(s, [(STREET[0], -1.0), (STREET[1], -1.0)] + horses)
    changed_at = [i for i, (_, changed) in enumerate(out) if changed]
    assert changed_at == [0, 1 + k]
    best = max(horses[:k], key=lambda h: h[1])[0]
    assert out[1 + k][0] == best and s.shown == best


def test_confident_hard_change_is_immediate_but_not_before_min_hold():
    s = CaptionSmoother(confirm_runs=3, confident_margin=None, confident_score=-0.5, min_hold_s=3.0)
    assert s.update(STREET[0], -1.0, 0.0) == (STREET[0], True)
    assert s.update("a brown horse grazes in a field", -0.2, 2.0) == (STREET[0], False)  # held
    assert s.update("a horse grazes in a green field", -0.2, 4.0)[1]  # hard change after hold
    shown = s.shown
    assert s.update("a dog on the beach", -0.9, 6.0) == (shown, False)  # not confident: wait


def test_empty_captions_are_ignored_and_reset_forgets():
    s = CaptionSmoother()
    assert s.update("  ", -1, 0) == ("", False)
    assert s.update("a cat", -1, 1) == ("a cat", True)
    assert s.update("", -1, 2) == ("a cat", False)
    s.reset()
    assert s.shown is None and s.update("a dog", -1, 3) == ("a dog", True)


def test_schedule_every_n_frames_counts_from_last_due_frame():
    sched = CaptionSchedule(every_n_frames=3)
    assert [i for i in range(10) if sched.due(i, i / 10)] == [0, 3, 6, 9]
    sched = CaptionSchedule(every_n_frames=3)  # live source dropping frames: 0, 2, 5, 7, 8
    assert [i for i in (0, 2, 5, 7, 8, 11) if sched.due(i, i / 10)] == [0, 5, 8, 11]


def test_schedule_interval_uses_stream_time():
    sched = CaptionSchedule(interval_s=2.0)
    times = [0.0, 0.5, 1.99, 2.0, 2.1, 3.9, 4.0, 7.5]
    assert [t for i, t in enumerate(times) if sched.due(i, t)] == [0.0, 2.0, 4.0, 7.5]


def test_schedule_either_condition_fires_and_restarts_go_due():
    sched = CaptionSchedule(every_n_frames=10, interval_s=1.0)
    fired = [i for i in range(30) if sched.due(i, i * 0.25)]  # 4 fps: time fires first
    assert fired == [0, 4, 8, 12, 16, 20, 24, 28]
    assert sched.due(0, 0.0)  # source restarted: index and time went back
    every = CaptionSchedule()
    assert all(every.due(i, i * 0.1) for i in range(5)) and not every.due(4, 0.4)
    with pytest.raises(ValueError):
        CaptionSchedule(every_n_frames=0)


def test_hard_cut_passes_at_once_when_much_surer_than_the_shown_scene():
    s = CaptionSmoother(confirm_runs=3, confident_margin=0.5)
    run(s, [(STREET[i % 4], -2.6) for i in range(5)])  # the shown scene scores about -2.6
    assert s.update("a dog jumps over a fence", -2.4, 10.0) == (STREET[0], False)  # outlier, unsure
    assert s.update("two dogs run in a field", -1.7, 12.0) == ("two dogs run in a field", True)
    assert s.update("a man walks down a street", -2.0, 14.0)[1] is False  # not surer than -1.7 + 0.5


# A first caption from a black frame, then one scene the model words differently every run: no
# two runs in a row are similar enough to confirm a candidate, but they all share content words.
BLACK_FRAME = "a man in a blue shirt is sitting on a wall"
DOGS = ["a dog runs through the grass", "a brown dog runs in a field", "a dog running on the green grass",
        "two dogs run in a grassy field", "a brown dog runs on grass", "a dog is running through a field"]


def test_consistent_stream_of_rewordings_replaces_a_first_caption_from_a_black_frame():
    s = CaptionSmoother()  # defaults, as the pipeline uses them
    assert all(similarity(a, b) < s.same_threshold for a, b in zip(DOGS, DOGS[1:]))
    out = run(s, [(BLACK_FRAME, -2.5)] + [(text, -2.6) for text in DOGS * 3])
    assert out[0] == (BLACK_FRAME, True)
    changed_at = [i for i, (_, changed) in enumerate(out) if changed]
    assert changed_at[1] <= s.consensus_runs  # within consensus_runs runs of the new stream
    assert out[-1][0] in DOGS and s.shown in DOGS
    assert s.changes <= 3  # the stream is one scene: it does not flicker between its wordings


def test_consensus_needs_agreement_so_unrelated_noise_never_replaces_the_shown_caption():
    s = CaptionSmoother()
    noise = ["a dog runs on grass", "a boy in a red shirt", "a car parked outside", "a plate of food"]
    out = run(s, [(BLACK_FRAME, -2.5)] + [(text, -2.6) for text in noise * 3])
    assert {shown for shown, _ in out} == {BLACK_FRAME}
