"""The engine's supervisor: readers -> producer -> writer -> sinks, one shutdown path.

Threads: one reader per source (capture.py); one producer: the inference worker (inference.py: the
stage on every frame, ``seg_every`` 1) or the keyframe and carry workers (keyframes.py: the stage on
some frames, masks carried to every frame); a caption worker for live sources (captioning.py); one
writer (writer.py: restores order, draws, writes the video and the log). Every producer hands the
writer the same record, ``(source, seq, FrameResult)``. The caller's thread supervises: watchdog,
statistics, window, signals. Shutdown is one path for every cause: set the stop event, let each
worker finish its current item, pass one end marker downstream, close the sinks in ``finally``;
whatever has not finished ``stop_grace_s`` after the stop request is abandoned (daemon threads),
so a callback or encoder that never returns cannot hold the run.

A worker that raises (reader, inference, keyframes, carry, caption, writer) goes through
``_worker_failed``, the one place that turns an exception into the run's error: a ``stage_error``
record naming the worker, the summary's and the ``end`` record's error, and the exit code.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from streamcap.captioning import Captions
from streamcap.capture import EOS, SourceConfig, SourceReader, redact_url
from streamcap.errors import (EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SOURCE_FAILED, BadInputError,
                              StageError, StreamcapError)
from streamcap.inference import InferenceWorker
from streamcap.keyframes import AUTO, CarryWorker, KeyframeWorker, parse_seg_every
from streamcap.sinks import JsonlSink, VideoFileSink, iso_time
from streamcap.stages import CaptionStage, InferenceStage, NoOpStage
from streamcap.types import Detections, Frame, FrameResult
from streamcap.writer import END, Writer

log = logging.getLogger(__name__)

STAGE_ERROR_POLICIES = ("skip", "stop")
UNTRAINED_NOTICE = "untrained segmenter"  # drawn on every frame when the stage has random weights


@dataclass(frozen=True)
class PipelineConfig:
    result_queue_size: int = 8
    stats_interval_s: float = 10.0  # a "stats" log record this often (0: never)
    log_every: int = 1  # a "frame" log record every N processed frames (0: none)
    log_objects: bool = True  # per-object label/score/box in frame records
    log_masks: bool = False  # COCO RLE masks in frame records
    on_stage_error: str = "skip"  # skip the frame and count it, or stop the run
    max_consecutive_errors: int = 5  # "skip" gives up after this many failures in a row
    stop_grace_s: float = 3.0  # after a stop request, how long in-flight frames may take
    seg_every: int | str = 1  # 1: the stage on every frame; N: keyframes 0, N, 2N...; "auto": when free
    track: bool = True  # tracking ids per object (track_id in the log, #id on the tags)
    max_fps: float | None = None  # keyframe mode, live sources: write at most this many frames a second


@dataclass
class RunSummary:
    reason: str = "eos"  # eos | sigint | sigterm | error | window_closed | sources_failed
    exit_code: int = EXIT_OK
    error: str | None = None
    frames_read: int = 0
    processed: int = 0
    keyframes: int = 0  # frames the model ran on (every processed frame when seg_every is 1)
    written: int = 0
    dropped: int = 0
    stage_errors: int = 0
    frame_errors: int = 0
    captions: int = 0
    elapsed_s: float = 0.0
    encoder: str | None = None
    output: str | None = None
    output_partial: bool = False
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


class Stats:
    """Counters shared by the threads; ``snapshot()`` gives rates since the previous snapshot
    for the run, and leaves the same figures for each source in ``sources`` (name -> dict; for the
    ``stats`` log record, not the HUD)."""

    def __init__(self, readers: Sequence[SourceReader], result_queue: queue.Queue) -> None:
        self._readers = readers
        self._result_queue = result_queue
        self._lock = threading.Lock()
        self.processed = 0
        self.written = 0
        self.stage_errors = 0
        self.captions = 0
        self.keyframes = 0  # keyframe mode: frames the model finished
        self.capped = 0  # keyframe mode: live frames left out by max_fps (counted as dropped)
        self.latency_ms: float | None = None  # exponential average of frame age at write
        self.latency_max_ms = 0.0
        names = [r.cfg.name for r in readers]
        self._src_processed: dict[str, int] = dict.fromkeys(names, 0)
        self._src_written: dict[str, int] = dict.fromkeys(names, 0)
        self._src_latency: dict[str, float] = {}
        self._src_capped: dict[str, int] = {}
        self._t_start = time.monotonic()
        self._prev = (self._t_start, 0, 0)
        self._src_prev: dict[str, tuple[int, int]] = {n: (0, 0) for n in names}
        self.sources: dict[str, dict[str, Any]] = {}

    def add_processed(self, n: int, source: str | None = None) -> None:
        with self._lock:
            self.processed += n
            if source is not None:
                self._src_processed[source] = self._src_processed.get(source, 0) + n

    def add_stage_errors(self, n: int) -> None:
        with self._lock:
            self.stage_errors += n

    def add_keyframes(self, n: int) -> None:
        with self._lock:
            self.keyframes += n

    def add_capped(self, source: str | None = None) -> None:
        with self._lock:
            self.capped += 1
            if source is not None:
                self._src_capped[source] = self._src_capped.get(source, 0) + 1

    def add_caption(self) -> None:
        with self._lock:
            self.captions += 1

    def add_written(self, latency_ms: float, source: str | None = None) -> None:
        with self._lock:
            self.written += 1
            self.latency_max_ms = max(self.latency_max_ms, latency_ms)
            self.latency_ms = latency_ms if self.latency_ms is None else 0.9 * self.latency_ms + 0.1 * latency_ms
            if source is not None:
                self._src_written[source] = self._src_written.get(source, 0) + 1
                prev = self._src_latency.get(source)
                self._src_latency[source] = latency_ms if prev is None else 0.9 * prev + 0.1 * latency_ms

    def snapshot_elapsed(self) -> float:
        return time.monotonic() - self._t_start

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        per_in = {r.cfg.name: r.frames_read for r in self._readers}
        frames_in = sum(per_in.values())
        with self._lock:
            t0, in0, done0 = self._prev
            dt = max(now - t0, 1e-6)
            sources = {}
            for r in self._readers:
                name = r.cfg.name
                src_in0, src_done0 = self._src_prev.get(name, (0, 0))
                done = self._src_processed.get(name, 0)
                latency = self._src_latency.get(name)
                sources[name] = {
                    "input_fps": round((per_in[name] - src_in0) / dt, 2),
                    "processed_fps": round((done - src_done0) / dt, 2),
                    "frames_in": per_in[name], "processed": done, "written": self._src_written.get(name, 0),
                    "dropped": r.dropped + self._src_capped.get(name, 0), "frame_errors": r.errors,
                    "latency_ms": None if latency is None else round(latency, 1),
                }
                self._src_prev[name] = (per_in[name], done)
            snap = {
                "elapsed_s": round(now - self._t_start, 2),
                "input_fps": round((frames_in - in0) / dt, 2),
                "processed_fps": round((self.processed - done0) / dt, 2),
                "frames_in": frames_in,
                "processed": self.processed,
                "written": self.written,
                "dropped": sum(r.dropped for r in self._readers) + self.capped,
                "keyframes": self.keyframes,
                "stage_errors": self.stage_errors,
                "frame_errors": sum(r.errors for r in self._readers),
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
                "latency_max_ms": round(self.latency_max_ms, 1),
                "queues": {r.cfg.name: r.queue.qsize() for r in self._readers},
                "result_queue": self._result_queue.qsize(),
            }
            self.sources = sources
            self._prev = (now, frames_in, self.processed)
        return snap


class Pipeline:
    """Runs sources through an inference stage into sinks. Build it, then call ``run()``.

    ``renderer`` draws a FrameResult onto a copy of its image (``annotate(image, result,
    stats)``); it is only called when something consumes images (a video, a window, or an
    ``on_frame`` callback). ``captioner`` with ``schedule_factory`` and ``smoother_factory``
    adds scene captions. ``on_result(result)`` and ``on_frame(result, image)`` are called from
    the writer thread for each frame, in order.
    """

    def __init__(
        self,
        sources: Sequence[SourceConfig],
        stage: InferenceStage | None = None,
        *,
        config: PipelineConfig = PipelineConfig(),
        captioner: CaptionStage | None = None,
        schedule_factory: Callable[[], Any] | None = None,
        smoother_factory: Callable[[], Any] | None = None,
        renderer: Any = None,
        video: VideoFileSink | None = None,
        log_sink: JsonlSink | None = None,
        summarize: Callable[[Detections], dict] | None = None,
        on_result: Callable[[FrameResult], None] | None = None,
        on_frame: Callable[[FrameResult, np.ndarray], None] | None = None,
        display: bool = False,
        hud: bool = False,
    ) -> None:
        if config.on_stage_error not in STAGE_ERROR_POLICIES:
            raise StreamcapError(f"unknown stage error policy {config.on_stage_error!r}")
        self.seg_every = parse_seg_every(config.seg_every)
        if config.max_fps is not None and not config.max_fps > 0:
            raise BadInputError(f"--max-fps must be more than 0, got {config.max_fps}")
        self.config = config
        self.stage = stage or NoOpStage()
        self.captioner = captioner
        self.schedule_factory = schedule_factory
        self.smoother_factory = smoother_factory
        self.renderer = renderer
        self.video = video
        self.log_sink = log_sink
        self.summarize = summarize
        self.on_result = on_result
        self.on_frame = on_frame
        self.display = display
        self.hud = hud
        self.readers = [SourceReader(s, on_status=self._on_status) for s in sources]
        self.results: queue.Queue = queue.Queue(maxsize=config.result_queue_size)
        self.stats = Stats(self.readers, self.results)
        self.summary = RunSummary()
        self.display_slot: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._reason: str | None = None
        self._fatal: StreamcapError | None = None
        self._lock = threading.Lock()
        self.captions = Captions(self, captioner, schedule_factory, smoother_factory)
        self._source_state: dict[str, dict[str, Any]] = {r.cfg.name: {"status": "starting"} for r in self.readers}
        self._threads: list[threading.Thread] = []
        self._rr_next = 0  # where the producer's next round-robin scan starts
        self._seq: dict[str, int] = {}  # per source: the next result's sequence number for the writer
        self._consecutive = 0  # stage failures in a row
        # seg_every 1: one inference worker runs the stage on every frame. Otherwise the keyframe
        # worker runs it on some frames and the carry worker carries their objects to every frame.
        if self.seg_every == AUTO and all(r.cfg.drop == "block" for r in self.readers):
            self.seg_every = 1  # nothing is dropped and files wait for each keyframe: every frame is one
        self.producer = "inference" if self.seg_every == 1 else "carry"
        self.keyframes = KeyframeWorker(self) if self.producer == "carry" else None
        self._producer_worker = InferenceWorker(self) if self.keyframes is None else CarryWorker(
            self, self.keyframes, self.seg_every, track=config.track, max_fps=config.max_fps)
        self.writer = Writer(self)
        self._video_lock = threading.Lock()  # the writer's video.write and shutdown's close never overlap
        self._video_closed = False
        self._abandoned = threading.Event()  # set when shutdown stops waiting for the workers
        self._scope = contextlib.ExitStack()
        self.notice = UNTRAINED_NOTICE if getattr(self.stage, "random_weights", False) else None
        self._last_stats_log = self._last_snapshot = time.monotonic()
        self.last_stats: dict[str, Any] = {}

    # -- control -------------------------------------------------------------------------------
    def request_stop(self, reason: str = "stopped") -> None:
        """Ask every thread to finish; safe from signal handlers and other threads."""
        if self._reason is None:
            self._reason = reason
        if not self._stop.is_set():
            self._stop_at = time.monotonic()
            self._stop.set()
        for r in self.readers:
            r.stop()

    def _fail(self, err: StreamcapError) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = err
        self.request_stop("error")

    def _worker_failed(self, worker: str, err: BaseException, source: str | None = None) -> None:
        """The one place where a worker's exception becomes the run's error and exit code:
        a ``stage_error`` record naming the worker, counted, and the run stopped with it."""
        fatal = err if isinstance(err, StreamcapError) else StageError(
            f"{worker} failed: {type(err).__name__}: {err}")
        message = redact_url(str(fatal))
        log.error("%s failed: %s", worker, message)
        log.debug("%s failure", worker, exc_info=err)
        self.stats.add_stage_errors(1)
        self._log("stage_error", source=source, frame_index=None, stage=worker, message=message[:500])
        self._fail(fatal)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def body() -> None:
            try:
                target()
            except BaseException as err:  # never lost in a thread
                self._worker_failed(name, err)

        t = threading.Thread(target=body, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- events --------------------------------------------------------------------------------
    def _on_status(self, source: str, status: str, **fields: Any) -> None:
        if status != "frame_error":
            state = self._source_state.setdefault(source, {})
            state["status"] = status
            state["since"] = iso_time(time.time())
        warn = ("lost", "stalled", "gave_up", "frame_error", "connect_failed", "truncated", "failed")
        level = logging.WARNING if status in warn else logging.INFO
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "source %s: %s %s", source, status, detail)
        event = "frame_error" if status == "frame_error" else "source_status"
        extra = fields if event == "frame_error" else {"status": status, **fields}
        self._log(event, source=source, **extra)

    def _log(self, event: str, **fields: Any) -> None:
        if self.log_sink is None:
            return
        try:
            self.log_sink.write(event, **fields)
        except StreamcapError as err:
            self._fail(err)

    # -- producers: the every-frame inference worker, or the keyframe and carry workers -------------
    def stopping(self) -> bool:
        return self._stop.is_set()

    def next_frames(self, pending: dict[str, SourceReader], limit: int | None = None) -> list[Frame]:
        """Up to ``limit`` (default: the stage's batch size) frames, round-robin over sources;
        waits briefly for the first. A source whose reader ended is removed from ``pending``."""
        batch: list[Frame] = []
        limit = limit or max(1, int(getattr(self.stage, "batch_size", 1)))
        deadline = time.monotonic() + 0.05
        while pending and len(batch) < limit:
            got_any = False
            # Start each scan after the source served last: with batch 1 (the CPU default) a
            # fixed order would hand every model call to the first camera that has a frame.
            order = list(pending.items())
            start = self._rr_next % len(order)
            for name, reader in order[start:] + order[:start]:
                try:
                    item = reader.queue.get_nowait()
                except queue.Empty:
                    continue
                got_any = True
                if item is EOS:
                    del pending[name]
                    continue
                batch.append(item)
                self._rr_next = (order.index((name, reader)) + 1) % len(order)
                if len(batch) >= limit:
                    break
            if batch and (not got_any or time.monotonic() > deadline):
                break
            if not got_any:
                if self._stop.is_set():
                    break
                time.sleep(0.002)
        return batch

    def call_stage(self, frames: list[Frame]) -> list[Detections | None] | None:
        """The stage's results for ``frames``, or None when it failed (logged and counted; the run
        stops under ``--on-stage-error stop`` or after too many failures in a row)."""
        try:
            outputs = self.stage(frames)
            if len(outputs) != len(frames):
                raise RuntimeError(f"stage returned {len(outputs)} results for {len(frames)} frames")
        except Exception as err:  # the documented policy: skip and count, or stop
            self._consecutive += len(frames)
            self.stats.add_stage_errors(len(frames))
            message = redact_url(f"{type(err).__name__}: {err}")
            log.warning("stage %s failed on %d frame(s): %s", self.stage.name, len(frames), message)
            for f in frames:
                self._log("stage_error", source=f.source, frame_index=f.index, stage=self.stage.name,
                          message=message[:500])
            if (self.config.on_stage_error == "stop"
                    or self._consecutive >= self.config.max_consecutive_errors):
                self._fail(StageError(f"stage {self.stage.name} failed: {message}"))
            return None
        self._consecutive = 0
        return outputs

    def emit(self, frame: Frame, det: Detections | None, extras: dict[str, Any]) -> bool:
        """Attach the caption, queue the frame's result for the writer; False when stopping."""
        self.stats.add_processed(1, frame.source)
        self.captions.offer(frame, det)
        caption, new_caption = self.captions.attach(frame.source)
        seq = self._seq.get(frame.source, 0)
        self._seq[frame.source] = seq + 1
        return self._put_result((frame.source, seq, FrameResult(frame, det, caption, new_caption, extras)))

    def _producer(self, body: Callable[[], None]) -> Callable[[], None]:
        """A producer's thread body: whatever way it ends, the writer gets the end marker."""
        def run() -> None:
            try:
                body()
            finally:
                self._put_result(END, force=True)
        return run

    def _put_result(self, item: Any, force: bool = False) -> bool:
        """Queue for the writer; after a stop request one more try (the writer ends by itself)."""
        while True:
            try:
                self.results.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._stop.is_set() or (force and not self.alive()):
                    return False

    def _past_grace(self) -> bool:
        return self._stop_at is not None and time.monotonic() - self._stop_at > self.config.stop_grace_s

    # -- supervision ---------------------------------------------------------------------------
    def start(self) -> None:
        # Stage-wide settings (torch's thread count) are set once, here, before any worker
        # starts, and restored in shutdown: never changed while another worker runs.
        scope = getattr(self.stage, "run_scope", None)
        if scope is not None:
            self._scope.enter_context(scope())
        self.last_stats = self.stats.snapshot()  # the HUD has figures from the first frame on
        self._last_snapshot = time.monotonic()
        for r in self.readers:
            r.start()
        if self.keyframes is not None:
            self._spawn("keyframes", self.keyframes.run)
        self._spawn(self.producer, self._producer(self._producer_worker.run))
        self._spawn("writer", self.writer.run)
        if self.captions.needs_worker:
            self._spawn("caption", self.captions.run)

    def alive(self) -> bool:
        return self._worker_alive("writer")

    def _worker_alive(self, name: str) -> bool:
        return any(t.is_alive() for t in self._threads if t.name == name)

    def tick(self) -> None:
        """Periodic supervision from the caller's thread: watchdog, reader errors, stats."""
        for r in self.readers:
            r.check_watchdog()
            if r.error is not None:
                err, r.error = r.error, None
                message = redact_url(f"{type(err).__name__}: {err}")
                self._on_status(r.cfg.name, "failed", message=message[:500])
                self._worker_failed(f"reader {r.cfg.name}", err, source=r.cfg.name)
        now = time.monotonic()
        if now - self._last_snapshot >= 1.0:  # rates over about one second, for HUD and --stats
            self._last_snapshot = now
            self.last_stats = self.stats.snapshot()
        if self.config.stats_interval_s > 0 and now - self._last_stats_log >= self.config.stats_interval_s:
            self._last_stats_log = now
            self._log("stats", **self.last_stats, sources=self.stats.sources)

    def run(self, *, on_tick: Callable[["Pipeline"], None] | None = None, tick_s: float = 0.1) -> RunSummary:
        """Run to the end of input or a stop request; always closes the sinks.

        After a stop request the run ends within ``stop_grace_s`` (plus a second for readers
        blocked in a network call) whatever a worker or callback is doing."""
        t0 = time.monotonic()
        self._log("start", sources=[r.cfg.name for r in self.readers], stage=self.stage.name,
                  captioner=getattr(self.captioner, "name", None))
        try:
            self.start()
            while self.alive() and not self._past_grace():
                self.tick()
                if on_tick is not None:
                    on_tick(self)
                time.sleep(tick_s)
            self.tick()
        except KeyboardInterrupt:
            self.request_stop("sigint")
        finally:
            self.shutdown()
        self._finish_summary(time.monotonic() - t0)
        return self.summary

    def shutdown(self) -> None:
        """Stop readers, let workers drain until the stop grace ends, finalize the video."""
        if not self._stop.is_set() and self._reason is None:
            self._reason = "eos"
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()
        self.captions.wake()
        if self.keyframes is not None:
            self.keyframes.wake()
        try:
            for r in self.readers:
                r.stop()
            deadline = self._stop_at + self.config.stop_grace_s
            for t in self._threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in self._threads if t.is_alive()]
            if stuck:
                self._abandoned.set()
                message = (f"{', '.join(stuck)} did not finish within the {self.config.stop_grace_s} s stop "
                           f"grace (blocked in a model, a callback or the encoder); abandoned")
                log.warning(message)
                self._log("stage_error", source=None, frame_index=None, stage=",".join(stuck), message=message)
            # Readers blocked in a network open/read cannot be interrupted: give them one
            # shared second (not one each, so that many dead cameras never delay the exit).
            deadline = time.monotonic() + 1.0
            for r in self.readers:
                if r.is_alive():
                    r.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            self._close_video(wait_s=0.5)
            self._scope.close()

    def _close_video(self, wait_s: float | None = None) -> None:
        """Finalize the video once, never while the writer is inside ``video.write``. The writer
        closes it when it ends; shutdown closes it for a writer that was abandoned."""
        if self.video is None:
            return
        if not self._video_lock.acquire(timeout=-1 if wait_s is None else wait_s):
            self._fail(StageError("the video encoder did not return within the stop grace; "
                                  f"{self.video.path} was left unfinalized"))
            return
        try:
            if self._video_closed:
                return
            self._video_closed = True
            try:
                self.video.close()
            except StreamcapError as err:
                self._fail(err)
        finally:
            self._video_lock.release()

    def _finish_summary(self, elapsed: float) -> None:
        s = self.summary
        snap = self.stats.snapshot()
        s.elapsed_s = round(elapsed, 3)
        s.frames_read = snap["frames_in"]
        s.processed = snap["processed"]
        s.keyframes = snap["keyframes"]
        s.written = snap["written"]
        s.dropped = snap["dropped"]
        s.stage_errors = snap["stage_errors"]
        s.frame_errors = snap["frame_errors"]
        s.captions = self.stats.captions
        s.sources = {r.cfg.name: {**self._source_state.get(r.cfg.name, {}), "frames": r.frames_read,
                                  "dropped": r.dropped, "gave_up": r.gave_up} for r in self.readers}
        if self.video is not None:
            s.encoder = self.video.encoder
            s.output = str(self.video.path)
        reason = self._reason or "eos"
        if self._fatal is not None:
            s.reason, s.error, s.exit_code = "error", redact_url(str(self._fatal)), self._fatal.exit_code
        elif reason == "sigint":
            s.reason, s.exit_code = reason, EXIT_SIGINT
        elif reason == "sigterm":
            s.reason, s.exit_code = reason, EXIT_SIGTERM
        elif self.readers and all(r.gave_up and not r.ever_connected for r in self.readers):
            s.reason, s.exit_code = "sources_failed", EXIT_SOURCE_FAILED
            s.error = ("source never connected, gave up after --max-retries: "
                       + ", ".join(r.cfg.name for r in self.readers))
        else:
            s.reason, s.exit_code = reason, EXIT_OK
        if s.reason == "error" and self.video is not None:
            # An output cut short by an error is kept, under a name that says so.
            partial = self.video.mark_partial()
            if partial is not None:
                s.output, s.output_partial = str(partial), True
        self._log("end", reason=s.reason, exit_code=s.exit_code, error=s.error, frames_read=s.frames_read,
                  processed=s.processed, keyframes=s.keyframes, written=s.written, dropped=s.dropped, stage_errors=s.stage_errors,
                  frame_errors=s.frame_errors, elapsed_s=s.elapsed_s, output=s.output,
                  output_partial=s.output_partial, encoder=s.encoder, sources=s.sources)
