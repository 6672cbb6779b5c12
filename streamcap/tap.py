"""The record tap: every record the engine logs, and every annotated frame, handed to in-process
subscribers (search index, event snapshots, alerts, the web dashboard), with or without ``--log``.

The pipeline writes its records through one object with the ``JsonlSink.write(event, source=,
ts=, **fields)`` interface. ``RecordTap`` is that object: for each record it

1. builds the dict once (``sinks.make_record``: ``schema``, ``event``, ``time``, ``source``,
   the fields with credentials removed from URLs);
2. lets each *enricher* add fields to it (the event store adds ``snapshot`` to caption and alert
   records and ``events`` to stats and end records);
3. appends it to the JSONL log, when there is one (the exact dict, serialized);
4. calls each *subscriber* with that same dict.

Rules for subscribers (``tap.subscribe(fn)``, ``fn(record: dict) -> None``):

- The record is shared: treat it as read-only (copy it to keep a changed version). Its values
  are what the JSONL line holds once serialized (numbers may still be numpy scalars).
- Calls come from the engine's threads (writer, caption worker, supervisor), one at a time and
  in the order of the log file, under the tap's lock: a subscriber must be quick (no network,
  no disk waits, no sleeping). Anything slow goes onto the subscriber's own queue and thread
  (``search.IndexWriter`` does that and drops, counted, when its queue is full).
- An exception in a subscriber is counted (``subscriber_errors``) and logged (a warning the
  first time for each subscriber, debug after), and never stops the run or other subscribers.
- A subscriber may itself write records (``tap.write("alert", ...)``): they are logged and
  delivered at once, nested inside the current delivery.

Frames: ``tap.subscribe_frames(fn)``, ``fn(result: FrameResult, image: np.ndarray)``, is called
from the writer thread for every frame written, in each source's order, with the annotated
image (BGR, the frame as drawn for the video: masks, tags, caption banner). ``image`` is the
writer's array: copy or encode it before returning, never keep it to change. Same rules: quick,
exceptions counted and never stop the run. ``tap.wants_image(result)`` (also the
``wants_image`` attribute of the ``on_frame`` callback ``run_job`` gives the pipeline) says
whether anything attached needs the drawn image of that frame, for a writer that draws only
when needed: a frame subscriber may define ``wants_image(result) -> bool | int`` (e.g. "a viewer
is connected"; an int: the width in pixels that is enough, and the writer then draws onto the
frame scaled down to it, which costs a fraction of drawing and encoding the full frame); one
without it always gets full-size images.

Subscribe before ``run_job`` starts: the pipeline gets an ``on_frame`` callback only when a
frame subscriber, the event store or the caller's ``on_frame`` exists at the start (so a plain
run draws nothing extra). Viewers that come and go subscribe one dispatcher up front and
answer ``wants_image`` by whether anyone watches. ``unsubscribe`` works at any time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from streamcap.sinks import JsonlSink, make_record

log = logging.getLogger(__name__)

RecordFn = Callable[[dict], None]
FrameFn = Callable[[Any, Any], None]


class RecordTap:
    """Fan-out of log records and annotated frames; see the module docstring for the rules."""

    def __init__(self, jsonl: JsonlSink | None = None) -> None:
        self.jsonl = jsonl
        self.events = None  # an events.EventStore, set by run_job with --events-dir
        self.index = None  # a search.IndexWriter, set by run_job when there is a log
        self._subscribers: tuple[RecordFn, ...] = ()
        self._frame_subscribers: tuple[FrameFn, ...] = ()
        self._enrichers: tuple[RecordFn, ...] = ()
        self._lock = threading.RLock()  # one record at a time, in file order; re-entrant for nested writes
        self._warned: set[str] = set()
        self.records = 0
        self.subscriber_errors = 0

    # -- attaching ---------------------------------------------------------------------------------
    def subscribe(self, fn: RecordFn) -> RecordFn:
        """Call ``fn(record)`` for every record from now on; returns ``fn``."""
        self._subscribers = self._subscribers + (fn,)
        return fn

    def unsubscribe(self, fn: RecordFn) -> None:
        self._subscribers = tuple(f for f in self._subscribers if f is not fn)

    def subscribe_frames(self, fn: FrameFn) -> FrameFn:
        """Call ``fn(result, image)`` for every frame written from now on; returns ``fn``."""
        self._frame_subscribers = self._frame_subscribers + (fn,)
        return fn

    def unsubscribe_frames(self, fn: FrameFn) -> None:
        self._frame_subscribers = tuple(f for f in self._frame_subscribers if f is not fn)

    def add_enricher(self, fn: RecordFn) -> None:
        """``fn(record)`` may add fields before the record is written (keep it quick)."""
        self._enrichers = self._enrichers + (fn,)

    @property
    def active(self) -> bool:
        """True when records go anywhere (a log, a subscriber, an enricher)."""
        return bool(self.jsonl is not None or self._subscribers or self._enrichers)

    @property
    def has_frame_subscribers(self) -> bool:
        return bool(self._frame_subscribers)

    # -- records -----------------------------------------------------------------------------------
    def write(self, event: str, *, source: str | None = None, ts: float | None = None, **fields: Any) -> dict:
        """Build, enrich, log and deliver one record; returns it. Raises what the JSONL log
        raises (StageError on a full disk), after the subscribers have had the record."""
        record = make_record(event, source=source, ts=ts, **fields)
        with self._lock:
            for fn in self._enrichers:
                self._call(fn, record)
            error: BaseException | None = None
            if self.jsonl is not None:
                try:
                    self.jsonl.write_record(record)
                except BaseException as err:  # delivered anyway; raised below
                    error = err
            self.records += 1
            for fn in self._subscribers:
                self._call(fn, record)
        if error is not None:
            raise error
        return record

    @property
    def takes_encoded(self) -> bool:
        """Whether ``write_encoded`` may be used: no enricher (it could change a record after
        its line was built)."""
        return not self._enrichers

    def write_encoded(self, items: list[tuple[dict, str]]) -> None:
        """Log and deliver records that arrive built and encoded: ``(record, line)`` pairs, the
        line being exactly ``record_line(record)`` without its newline (the Ray driver's
        forwarded lines). One write for all of them; then every subscriber gets each record,
        in order. Raises as ``write`` does."""
        if not items:
            return
        with self._lock:
            error: BaseException | None = None
            if self.jsonl is not None:
                try:
                    self.jsonl.write_lines([line for _, line in items])
                except BaseException as err:  # delivered anyway; raised below
                    error = err
            self.records += len(items)
            for record, _ in items:
                for fn in self._subscribers:
                    self._call(fn, record)
        if error is not None:
            raise error

    # -- frames ------------------------------------------------------------------------------------
    def on_frame(self, result: Any, image: Any) -> None:
        """The pipeline's ``on_frame``: every frame subscriber, then the event store (so an alert
        record a subscriber writes for this frame gets its snapshot from this very frame)."""
        for fn in self._frame_subscribers:
            self._call(fn, result, image)
        if self.events is not None:
            self._call(self.events.on_frame, result, image)

    def wants_image(self, result: Any) -> bool | int:
        """Whether anything attached needs this frame drawn, and how large: False (nothing),
        True (the full-size frame) or a width in pixels (an image scaled down to that width is
        enough: the dashboard's tiles). A frame subscriber that has no ``wants_image(result)``
        method always wants the full frame; one that has it is asked (a web server with no viewer
        says no, one with viewers says its tile width); the event store wants the full frame when
        a snapshot of that camera is due. The widest answer wins."""
        widest = 0
        for fn in self._frame_subscribers:
            wants = getattr(fn, "wants_image", None)
            if wants is None:
                return True
            try:
                answer = wants(result)
            except Exception:
                return True
            if answer is True:
                return True
            if answer:
                widest = max(widest, int(answer))
        if self.events is not None and self.events.wants_image(result):
            return True
        return widest or False

    # -- errors ------------------------------------------------------------------------------------
    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:
            self.subscriber_errors += 1
            name = getattr(fn, "__qualname__", None) or type(fn).__name__
            if name not in self._warned:
                self._warned.add(name)
                log.warning("record tap: subscriber %s failed (%s: %s); the run goes on, later failures "
                            "are counted", name, type(err).__name__, err)
            else:
                log.debug("record tap: subscriber %s failed", name, exc_info=err)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the JSONL log (subscribers close themselves)."""
        if self.jsonl is not None:
            self.jsonl.close()
