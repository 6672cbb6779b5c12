"""Caption hysteresis and scheduling for live video (pure Python: no torch, no cv2).

The model re-words the same scene from frame to frame ("a man walks down the street" /
"a man is walking on a street"); showing every raw caption flickers. ``CaptionSmoother``
changes the shown text only when a different caption is confirmed over ``confirm_runs``
consecutive runs, when the recent captions agree with each other and not with the shown one
(consensus), or at once when it differs strongly and the model is confident.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Callable, Mapping, Sequence

# Words that carry no scene content: rewordings differ mostly in these.
STOP_WORDS = frozenset(
    "a an the is are was were be being been of in on at to into onto with and or by for from "
    "its his her their some two three while near down up over under through there it this that "
    "other another each one".split())

_WORD = re.compile(r"[^\W_]+")


def content_words(text: str) -> frozenset[str]:
    words = (w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS)
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                     for w in words)  # crude plural folding: dogs ~ dog


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of content words, 1.0 for two captions without content words."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


word_similarity = similarity  # the default of CaptionSmoother (its own ``similarity`` shadows the name)


def soft_similarity(a: str, b: str, vectors: Mapping[str, Sequence[float]], floor: float = 0.2) -> float:
    """Similarity by meaning: content words matched to their closest word in the other caption
    (1 for the same word, else the cosine of the unit word ``vectors``, rescaled so that
    ``floor`` and below count 0), averaged over the words of both. Words without a vector
    match only themselves. 1.0 for two captions without content words."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return 1.0
    if not wa or not wb:
        return 0.0

    def match(x: str, y: str) -> float:
        if x == y:
            return 1.0
        vx, vy = vectors.get(x), vectors.get(y)
        if vx is None or vy is None:
            return 0.0
        cos = float(vx.dot(vy)) if hasattr(vx, "dot") else sum(p * q for p, q in zip(vx, vy))
        return max(0.0, (cos - floor) / (1.0 - floor))

    total = sum(max(match(x, y) for y in wb) for x in wa) + sum(max(match(y, x) for x in wa) for y in wb)
    return total / (len(wa) + len(wb))


class WordVectors:
    """``similarity(a, b)`` by meaning from unit word vectors (e.g. a caption decoder's output
    embeddings): a callable for ``CaptionSmoother(similarity=...)``."""

    def __init__(self, vectors: Mapping[str, Sequence[float]], floor: float = 0.2) -> None:
        self.vectors, self.floor = dict(vectors), floor

    def __call__(self, a: str, b: str) -> float:
        return soft_similarity(a, b, self.vectors, self.floor)


class FrameWindow:
    """Frames sampled between two captions: after ``take(t)``, one every ``step_s`` seconds of
    stream time (``wants(t)`` says when), at most ``size`` (the oldest fall out first)."""

    def __init__(self, size: int, step_s: float) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size, self.step_s = size, max(step_s, 0.0)
        self._items: deque = deque(maxlen=size)
        self._last_t: float | None = None

    def wants(self, t_s: float) -> bool:
        return self._last_t is None or t_s < self._last_t or t_s - self._last_t >= self.step_s - 1e-9

    def add(self, t_s: float, item) -> None:
        self._items.append(item)
        self._last_t = t_s

    def take(self, t_s: float) -> list:
        """The items sampled so far, oldest first; sampling restarts from ``t_s``."""
        items = list(self._items)
        self._items.clear()
        self._last_t = t_s
        return items


class CaptionSmoother:
    """Hysteresis on captions: ``update(raw_text, score, t_s) -> (shown_text, changed)``.

    - A raw caption similar to the shown one (similarity >= ``same_threshold``) keeps it.
    - A different caption becomes a candidate; similar candidates in a row count up, and at
      ``confirm_runs`` the best-scored wording among them is shown.
    - Consensus: when the last ``consensus_runs`` raw captions (default ``confirm_runs + 1``)
      all differ from the shown one, the caption that agrees most with the others (highest
      mean similarity, the medoid) is shown if it shares content words with every one of
      them, its mean similarity is at least ``consensus_threshold``, and the shown caption
      agrees with them less than half as much.
      The model re-words a scene more freely than ``same_threshold`` allows, so a consistent
      stream of different wordings (after a first caption from a black or faded frame) would
      otherwise never replace what is shown; unrelated noise has no consensus and changes
      nothing.
    - A caption very different from the shown one (similarity <= ``hard_threshold``) is
      shown at once (hard cuts) when the model is clearly more sure of it than of the current
      scene: score >= (running score of the shown scene) + ``confident_margin``, or score >=
      ``confident_score`` (absolute; model-dependent, off by default); and only after the
      shown caption has been up for ``min_hold_s`` seconds. Set both to None to disable.
    - A scene change seen in the pixels (``update(..., scene_change=True)``, from the
      captioner's features) with a caption not similar to the shown one is shown at once
      (after ``min_hold_s``): a hard cut is one caption run, however unsure the model is.
    - ``similarity``: how captions are compared (default: word overlap, ``similarity``); a
      ``WordVectors`` compares them by meaning.
    - Still picture: with ``update(..., picture=v)`` (a unit vector of the captioned frames'
      pooled features), while the picture stays close to the one the shown caption was made
      for (cosine >= ``still_above``), the words alone must agree longer before they replace
      it: ``still_runs`` runs instead of ``confirm_runs`` (confirmation and consensus), and no
      confidence shortcut. The model re-telling an unchanged picture differently is noise;
      a change the pixels show goes through as above. ``still_runs=None``: off.
    """

    def __init__(self, confirm_runs: int = 2, same_threshold: float = 0.5,
                 hard_threshold: float = 0.1, confident_margin: float | None = 0.5,
                 confident_score: float | None = None, min_hold_s: float = 0.0,
                 consensus_runs: int | None = None, consensus_threshold: float = 0.25,
                 similarity: Callable[[str, str], float] | None = None,
                 still_runs: int | None = 8, still_above: float = 0.75) -> None:
        if confirm_runs < 1:
            raise ValueError("confirm_runs must be at least 1")
        if consensus_runs is not None and consensus_runs < 2:
            raise ValueError("consensus_runs must be at least 2")
        self.confirm_runs = confirm_runs
        self.same_threshold = same_threshold
        self.hard_threshold = hard_threshold
        self.confident_margin = confident_margin
        self.confident_score = confident_score
        self.min_hold_s = min_hold_s
        self.consensus_runs = consensus_runs or confirm_runs + 1
        self.consensus_threshold = consensus_threshold
        self.similarity = similarity or word_similarity
        if still_runs is not None and still_runs < 1:
            raise ValueError("still_runs must be at least 1")
        self.still_runs, self.still_above = still_runs, still_above
        self.reset()

    def reset(self) -> None:
        self.shown: str | None = None
        self.shown_since: float = 0.0
        self.shown_score: float = float("-inf")  # running score of raw captions like the shown one
        self._cand: str | None = None
        self._cand_best: tuple[float, str] = (float("-inf"), "")
        self._cand_count = 0
        self._unsupported: deque[tuple[str, float]] = deque(
            maxlen=max(self.consensus_runs, self.still_runs or 0))
        self.shown_picture = None
        self.changes = 0

    @property
    def pending(self) -> tuple[str | None, int]:
        """(candidate text, how many runs confirmed it so far)."""
        return self._cand, self._cand_count

    def _show(self, text: str, score: float, t_s: float, picture=None) -> tuple[str, bool]:
        self.shown, self.shown_since, self.shown_score = text, t_s, score
        self.shown_picture = picture
        self._cand, self._cand_count, self._cand_best = None, 0, (float("-inf"), "")
        self._unsupported.clear()
        self.changes += 1
        return text, True

    def _still(self, picture) -> bool:
        """Whether the picture is still the one the shown caption was made for."""
        if self.still_runs is None or picture is None or self.shown_picture is None:
            return False
        ref = self.shown_picture
        cos = float(ref.dot(picture)) if hasattr(ref, "dot") else sum(p * q for p, q in zip(ref, picture))
        return cos >= self.still_above

    def _consensus(self, runs: int) -> tuple[str, float] | None:
        """The medoid of the last ``runs`` unsupported captions when they agree and the shown
        one does not agree with them; else None."""
        recent = list(self._unsupported)[-runs:]
        if len(recent) < runs:
            return None

        def sims(text: str, skip: int | None = None) -> list[float]:
            return [self.similarity(text, r[0]) for k, r in enumerate(recent) if k != skip]

        def agreement(text: str, skip: int | None = None) -> float:
            values = sims(text, skip)
            return sum(values) / len(values)

        best = max(range(len(recent)), key=lambda k: (agreement(recent[k][0], k), recent[k][1]))
        text, score = recent[best]
        level = agreement(text, best)
        if (level < self.consensus_threshold or min(sims(text, best)) <= 0.0
                or agreement(self.shown or "") > level / 2):
            return None
        return text, score

    def update(self, raw_text: str, score: float, t_s: float, scene_change: bool = False,
               picture=None) -> tuple[str, bool]:
        raw_text = raw_text.strip()
        if self.shown is None:
            if not raw_text:
                return "", False
            return self._show(raw_text, score, t_s, picture)
        if not raw_text:
            return self.shown, False
        sim_shown = self.similarity(raw_text, self.shown)
        if sim_shown >= self.same_threshold:  # a rewording of what is shown
            self.shown_score = 0.7 * self.shown_score + 0.3 * score
            self._cand, self._cand_count = None, 0
            self._cand_best = (float("-inf"), "")
            self._unsupported.clear()
            return self.shown, False
        self._unsupported.append((raw_text, score))
        if scene_change and t_s - self.shown_since >= self.min_hold_s:
            return self._show(raw_text, score, t_s, picture)
        if self._cand is not None and self.similarity(raw_text, self._cand) >= self.same_threshold:
            self._cand_count += 1
        else:
            self._cand, self._cand_count = raw_text, 1
            self._cand_best = (float("-inf"), "")
        if score > self._cand_best[0]:
            self._cand_best = (score, raw_text)
        sure = ((self.confident_score is not None and score >= self.confident_score)
                or (self.confident_margin is not None and score >= self.shown_score + self.confident_margin))
        still = self._still(picture)
        hard = (sure and not still and sim_shown <= self.hard_threshold
                and t_s - self.shown_since >= self.min_hold_s)
        if self._cand_count >= (self.still_runs if still else self.confirm_runs) or hard:
            return self._show(self._cand_best[1], self._cand_best[0], t_s, picture)
        consensus = self._consensus(self.still_runs if still else self.consensus_runs)
        if consensus is not None:
            return self._show(consensus[0], consensus[1], t_s, picture)
        return self.shown, False


class CaptionSchedule:
    """When to caption: every N frames and/or every T seconds of stream time (either fires).

    Counts from the last frame that was due, so dropped frames (live sources) never make it
    skip a turn. Neither set: every frame. Time or index going backwards (a restarted
    source) is due at once.
    """

    def __init__(self, every_n_frames: int | None = None, interval_s: float | None = None) -> None:
        if every_n_frames is not None and every_n_frames < 1:
            raise ValueError("every_n_frames must be at least 1")
        if interval_s is not None and interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self.every_n_frames, self.interval_s = every_n_frames, interval_s
        self.reset()

    def reset(self) -> None:
        self._last_index: int | None = None
        self._last_t: float | None = None

    def due(self, frame_index: int, t_s: float) -> bool:
        if self._last_index is None or frame_index < self._last_index or t_s < self._last_t:
            fire = True
        elif self.every_n_frames is None and self.interval_s is None:
            fire = frame_index != self._last_index
        else:
            fire = ((self.every_n_frames is not None
                     and frame_index - self._last_index >= self.every_n_frames)
                    or (self.interval_s is not None
                        and t_s - self._last_t >= self.interval_s - 1e-9))
        if fire:
            self._last_index, self._last_t = frame_index, t_s
        return fire
