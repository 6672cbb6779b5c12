"""Benchmarks for live captions: flicker (shown changes per minute) and responsiveness
(seconds from a hard cut until the shown caption changes). Captions run every
``interval_s`` seconds of stream time, as the pipeline's schedule does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2

from streamcap.caption.smoothing import CaptionSchedule, CaptionSmoother, FrameWindow
from streamcap.errors import BadInputError
from streamcap.types import Frame

Record = tuple  # (t_s, raw text, score[, scene change seen in the pixels, picture vector])


def video_fps(path: str | Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BadInputError(f"cannot open video {path}")
        return cap.get(cv2.CAP_PROP_FPS) or 25.0
    finally:
        cap.release()


def video_frames(path: str | Path, max_s: float | None = None) -> Iterator[Frame]:
    """Frames of a video file with pts from index / fps (decoding only what is asked)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BadInputError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    try:
        index = 0
        while max_s is None or index / fps < max_s:
            ok, image = cap.read()
            if not ok:
                break
            yield Frame(str(path), index, index / fps, time.time(), image)
            index += 1
    finally:
        cap.release()


def still_frames(path: str | Path, start_index: int, start_s: float, duration_s: float,
                 fps: float = 10.0, source: str | None = None) -> Iterator[Frame]:
    """The photo as video frames of ``source`` (default: its path)."""
    image = cv2.imread(str(path))
    if image is None:
        raise BadInputError(f"cannot read image {path}")
    for i in range(int(round(duration_s * fps))):
        yield Frame(source or str(path), start_index + i, start_s + i / fps, time.time(), image)


def caption_stream(captioner: Callable[[Frame], tuple[str, float]], frames: Iterable[Frame],
                   interval_s: float, cost: dict | None = None) -> list[Record]:
    """Run the captioner on the frames the schedule picks: [(t_s, raw, score, scene_change)].

    A captioner with ``caption_window`` gets, as in the pipeline, the frames sampled since
    the previous caption (``window_sampler``) with the due one. ``cost``: adds up the seconds
    spent captioning (thumbnails, encoder, pooling, decoder) under "seconds" and the runs
    under "runs"."""
    schedule = CaptionSchedule(interval_s=interval_s)
    window = window_sampler(captioner, interval_s)
    cost = {} if cost is None else cost
    out = []
    for frame in frames:
        t0 = time.perf_counter()
        if schedule.due(frame.index, frame.pts_s):
            if hasattr(captioner, "caption_window"):
                thumbs = (window.take(frame.pts_s) if window else []) + [captioner.thumbnail(frame)]
                res = captioner.caption_window(thumbs, frame.source)
                out.append((frame.pts_s, res.text, float(res.score), res.scene_change, res.picture))
            else:
                text, score = captioner(frame)
                out.append((frame.pts_s, text, float(score), False))
            cost["runs"] = cost.get("runs", 0) + 1
        elif window is not None and window.wants(frame.pts_s):
            window.add(frame.pts_s, captioner.thumbnail(frame))
        else:
            continue
        cost["seconds"] = cost.get("seconds", 0.0) + time.perf_counter() - t0
    return out


def window_sampler(captioner, interval_s: float | None) -> FrameWindow | None:
    """The frames a window captioner pools besides the due one: ``window - 1`` evenly spaced
    over the caption interval; None when it pools none."""
    size = getattr(captioner, "window", 1) if hasattr(captioner, "caption_window") else 1
    if size <= 1:
        return None
    return FrameWindow(size - 1, (interval_s or 0.0) / size)


def smooth(records: list[Record], smoother: CaptionSmoother) -> list[tuple[float, str, bool]]:
    smoother.reset()
    return [(r[0], *smoother.update(r[1], r[2], r[0], scene_change=_cut(r),
                                    picture=r[4] if len(r) > 4 else None)) for r in records]


def _cut(record: tuple) -> bool:
    return bool(record[3]) if len(record) > 3 else False  # (t, raw, score) records: no pixel cue


def flicker_stats(records: list[Record], smoother: CaptionSmoother, duration_s: float) -> dict:
    shown = smooth(records, smoother)
    raw_changes = sum(a[1] != b[1] for a, b in zip(records, records[1:]))
    raw_scene_changes = sum(smoother.similarity(a[1], b[1]) < smoother.same_threshold
                            for a, b in zip(records, records[1:]))
    shown_changes = sum(changed for _, _, changed in shown[1:])  # the first caption is no change
    per_min = 60.0 / max(duration_s, 1e-9)
    return {
        "runs": len(records), "duration_s": round(duration_s, 2),
        "raw_changes": raw_changes, "raw_changes_per_min": round(raw_changes * per_min, 2),
        "raw_scene_changes_per_min": round(raw_scene_changes * per_min, 2),
        "shown_changes": shown_changes, "shown_changes_per_min": round(shown_changes * per_min, 2),
        "distinct_raw": len({r[1] for r in records}), "distinct_shown": len({s[1] for s in shown}),
        "scene_changes_seen": sum(_cut(r) for r in records),
    }


def measure_flicker(captioner, video: str | Path, interval_s: float = 2.0,
                    smoother: CaptionSmoother | None = None, max_s: float | None = None) -> dict:
    """Raw vs shown caption changes per minute over a video."""
    smoother = smoother or CaptionSmoother()
    if hasattr(captioner, "reset"):
        captioner.reset()
    cost: dict = {}
    records = caption_stream(captioner, video_frames(video, max_s), interval_s, cost)
    if not records:
        raise BadInputError(f"video {video} has no frames")
    frame_dt = records[1][0] - records[0][0] if len(records) > 1 else interval_s
    duration = records[-1][0] - records[0][0] + frame_dt
    stats = flicker_stats(records, smoother, duration)
    stats.update(video=str(video), interval_s=interval_s,
                 caption_ms=round(1000 * cost.get("seconds", 0.0) / max(cost.get("runs", 1), 1), 1),
                 captions=[{"t_s": round(t, 2), "raw": r, "score": round(s, 3), "shown": sh}
                           for (t, r, s, *_), (_, sh, _) in zip(records, smooth(records, smoother))])
    return stats


def measure_responsiveness(captioner, video: str | Path, still: str | Path, interval_s: float = 2.0,
                           cut_at_s: float = 20.0, after_s: float = 20.0,
                           smoother: CaptionSmoother | None = None) -> dict:
    """Clip A (the video) until ``cut_at_s``, then a hard cut to a still photo for ``after_s``."""
    smoother = smoother or CaptionSmoother()
    if hasattr(captioner, "reset"):
        captioner.reset()
    fps = video_fps(video)
    n_a: list[int] = []

    def stream() -> Iterator[Frame]:  # clip A, then the still from the next frame on
        for frame in video_frames(video, cut_at_s):
            yield frame
            n_a.append(frame.index)
        if not n_a:
            raise BadInputError(f"video {video} has no frames")
        yield from still_frames(still, len(n_a), len(n_a) / fps, after_s, fps, source=str(video))  # one stream

    records = caption_stream(captioner, stream(), interval_s)
    cut = len(n_a) / fps
    shown = smooth(records, smoother)
    before = [s for s, r in zip(shown, records) if r[0] < cut]
    after = [(r, s) for r, s in zip(records, shown) if r[0] >= cut]
    last_raw_before = [r for r in records if r[0] < cut][-1][1] if before else None
    raw_t = next((r[0] for r, _ in after if r[1] != last_raw_before), None)
    shown_t = next((s[0] for _, s in after if s[2]), None)
    return {
        "video": str(video), "still": str(still), "interval_s": interval_s, "cut_at_s": round(cut, 2),
        "shown_before_cut": before[-1][1] if before else None,
        "shown_after_cut": shown[-1][1] if shown else None,
        "raw_after_cut": after[0][0][1] if after else None,
        "raw_latency_s": None if raw_t is None else round(raw_t - cut, 2),
        "shown_latency_s": None if shown_t is None else round(shown_t - cut, 2),
        "runs_to_change": None if shown_t is None else sum(1 for r, _ in after if r[0] <= shown_t),
        "after_cut": [{"t_s": round(r[0] - cut, 2), "raw": r[1], "score": round(r[2], 3), "shown": sh[1]}
                      for r, sh in after],
    }


def bench(captioner, video: str | Path, still: str | Path, interval_s: float = 2.0,
          smoother_factory: Callable[[], CaptionSmoother] = CaptionSmoother,
          cut_at_s: float = 20.0, after_s: float = 20.0) -> dict:
    t0 = time.perf_counter()
    flicker = measure_flicker(captioner, video, interval_s, smoother_factory())
    resp = measure_responsiveness(captioner, video, still, interval_s, cut_at_s, after_s, smoother_factory())
    runs = flicker["runs"]
    return {"flicker": flicker, "responsiveness": resp,
            "seconds": round(time.perf_counter() - t0, 2), "caption_runs": runs}


def default_media(name: str) -> Path | None:
    """samples/NAME in the repo, else the shared media folder next to it."""
    root = Path(__file__).resolve().parents[2]
    for candidate in (root / "samples" / name, root.parent / "shared" / "media" / name):
        if candidate.is_file():
            return candidate
    return None

