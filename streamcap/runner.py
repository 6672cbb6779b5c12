"""Builds a pipeline from a job description and runs it with progress, statistics and signals.

The CLI and the Python API both come here; the CLI only parses options into a ``Job``.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from streamcap.capture import SourceConfig, probe_file, redact_url
from streamcap.errors import BadInputError
from streamcap.pipeline import Pipeline, PipelineConfig, RunSummary
from streamcap.sinks import JSONL_SCHEMA_FULL, JsonlSink, VideoFileSink, check_output_path, check_video_output
from streamcap.tap import RecordTap

log = logging.getLogger(__name__)


@dataclass
class Job:
    """Everything one run needs. ``segment``/``caption`` hold component options, or None to
    leave that model out."""

    command: str
    sources: list[SourceConfig]
    out: Path | None = None
    overwrite: bool = False
    codec: str = "auto"
    log: Path | None = None
    show: bool = False
    stats: bool = False
    hud: bool = False
    progress: bool = True
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    segment: dict[str, Any] | None = None
    caption: dict[str, Any] | None = None
    argv: list[str] = field(default_factory=list)
    duration_s: float | None = None  # stop after this many seconds (live, monitor)
    events_dir: Path | None = None  # event snapshots here (and the log, when no --log is given)
    events_max_mb: float = 500.0  # the events folder's bound; oldest snapshots removed first
    index: bool = True  # keep the search index beside the log while running


class StopHandle:
    """Ends a ``run_job`` from another thread: ``handle.stop(reason)`` asks the run's pipeline to
    stop at once (as a signal would: the log ends with ``end`` and that reason), or, when the
    pipeline does not exist yet, as soon as ``run_job`` has built it. Safe to call any number of
    times from any thread; the first reason wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self.reason: str | None = None

    def stop(self, reason: str = "stopped") -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            pipeline = self._pipeline
        if pipeline is not None:
            pipeline.request_stop(self.reason)

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def _attach(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipeline = pipeline
            reason = self.reason
        if reason is not None:
            pipeline.request_stop(reason)


def effective_log(job: Job) -> Path | None:
    """The JSONL log a job writes: ``--log``, else ``EVENTS_DIR/events.jsonl`` with
    ``--events-dir`` (snapshots are only found through the records that point to them)."""
    if job.log is not None:
        return Path(job.log)
    if job.events_dir is not None:
        return Path(job.events_dir) / "events.jsonl"
    return None


def build_models(job: Job, console: Console | None = None, *, stage: Any = None, captioner: Any = None):
    """(stage, summarize, captioner, schedule_factory, smoother_factory, renderer).

    A given ``stage``/``captioner`` is used instead of building the model the job describes.
    """
    from streamcap.stages import NoOpStage

    from streamcap.rle import detections_summary

    if stage is None and job.segment is None:
        stage = NoOpStage()
    if stage is None:
        from streamcap.segment import SegmenterConfig, build_segmenter

        stage = build_segmenter(SegmenterConfig(**job.segment))  # warns itself about random weights
    log_objects, log_masks = job.pipeline.log_objects, job.pipeline.log_masks
    summarize = lambda det: detections_summary(det, objects=log_objects, masks_rle=log_masks)  # noqa: E731
    schedule_factory = smoother_factory = None
    if job.caption is not None or captioner is not None:
        from streamcap.caption.smoothing import CaptionSchedule, CaptionSmoother

        opts = dict(job.caption or {})
        every, interval = opts.pop("every", None), opts.pop("interval", None)
        if every is None and interval is None:
            interval = 2.0
        smooth = opts.pop("smooth", True)
        if captioner is None:
            from streamcap.caption.api import Captioner

            captioner = Captioner(**opts)
        schedule_factory = lambda: CaptionSchedule(every_n_frames=every, interval_s=interval)  # noqa: E731
        smoother_factory = CaptionSmoother if smooth else None
    renderer = None
    try:
        from streamcap.render import Renderer

        renderer = Renderer(hud=job.hud or job.stats, banner=job.caption is not None)
    except ImportError:  # drawing not available: frames are written as read
        renderer = None
    return stage, summarize, captioner, schedule_factory, smoother_factory, renderer


def validate(job: Job) -> dict[str, Any]:
    """Check inputs and outputs before anything starts; returns probe info per file source."""
    infos = {}
    for src in job.sources:
        if not src.live:
            infos[src.uri] = probe_file(src.resolved())
    inputs = [s.uri for s in job.sources if not s.live]
    if job.out is not None:
        check_video_output(job.out, job.codec)
        check_output_path(job.out, inputs, overwrite=job.overwrite)
    if job.events_dir is not None:
        from streamcap.events import check_events_dir

        if not job.events_max_mb > 0:
            raise BadInputError(f"--events-max-mb must be more than 0, got {job.events_max_mb}")
        check_events_dir(job.events_dir)
    log_path = effective_log(job)
    if log_path is not None:
        check_output_path(log_path, inputs, append=True)
        if job.out is not None and log_path.resolve() == Path(job.out).resolve():
            raise BadInputError("--log and --out name the same file")
    if job.show:
        from streamcap.sinks import display_available

        if not display_available():
            raise BadInputError("--show needs a display and an OpenCV build with a GUI "
                                "(pip install opencv-python); none here — drop --show on headless machines")
    return infos


def run_job(job: Job, *, console: Console | None = None, on_result: Callable | None = None,
            on_frame: Callable | None = None, install_signals: bool = True, stage: Any = None,
            captioner: Any = None, tap: RecordTap | None = None,
            on_record: Callable[[dict], None] | None = None, stop: StopHandle | None = None) -> RunSummary:
    """Validate, build, run, and always finalize; returns the summary (exit code inside).

    ``stop``: a ``StopHandle`` another thread uses to end the run (without signals).

    ``stage`` / ``captioner`` replace the models the job describes (embedding, tests).
    ``tap`` (a ``streamcap.tap.RecordTap`` with its subscribers attached) or ``on_record``
    receive every log record, with or without a log file; frame subscribers of the tap get
    every annotated frame (see ``streamcap.tap`` for the rules). After the run, ``tap.events``
    is the ``EventStore`` (with ``--events-dir``) and ``tap.index`` the search ``IndexWriter``
    (with a log), both closed, for their figures.
    """
    console = console or Console(stderr=True)
    infos = validate(job)
    stage, summarize, captioner, sched, smoother, renderer = build_models(job, console, stage=stage,
                                                                          captioner=captioner)
    resolved = [s.resolved() for s in job.sources]
    video = None
    if job.out is not None:
        first = resolved[0]
        fps = infos[first.uri].fps / first.stride if first.uri in infos else 25.0
        video = VideoFileSink(job.out, fps, codec=job.codec)
    tap = tap if tap is not None else RecordTap()
    if on_record is not None:
        tap.subscribe(on_record)
    try:
        _attach_outputs(job, tap)
        frame_cb = _frame_callback(tap, on_frame)
        pipeline = Pipeline(resolved, stage, config=job.pipeline, captioner=captioner, schedule_factory=sched,
                            smoother_factory=smoother, renderer=renderer, video=video,
                            log_sink=tap if tap.active else None, summarize=summarize, on_result=on_result,
                            on_frame=frame_cb, display=job.show, hud=job.hud or job.stats)
    except BaseException:
        _close_outputs(tap)
        raise
    if tap.active:
        tap.write("run", command=job.command, argv=[redact_url(a) for a in job.argv],
                  sources=[s.name for s in resolved], stage=stage.name,
                  stage_info=stage.describe() if hasattr(stage, "describe") else stage.name,
                  random_weights=bool(getattr(stage, "random_weights", False)),
                  captioner=getattr(captioner, "name", None), schema_version=JSONL_SCHEMA_FULL)
    if stop is not None:
        stop._attach(pipeline)
    old_handlers = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        def handler(signum, _frame):
            pipeline.request_stop("sigint" if signum == signal.SIGINT else "sigterm")
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, handler)
    window = None
    try:
        if job.show:
            from streamcap.sinks import WindowSink

            window = WindowSink()
        total = sum((infos[s.uri].frame_count + s.stride - 1) // s.stride for s in resolved if s.uri in infos)
        with _Display(console, job, total) as display:
            def on_tick(p: Pipeline) -> None:
                display.update(p)
                if job.duration_s is not None and p.stats.snapshot_elapsed() >= job.duration_s:
                    p.request_stop("duration")
                if window is not None:
                    try:
                        image = p.display_slot.get_nowait()
                    except Exception:
                        image = None
                    if image is not None and not window.show(image):
                        p.request_stop("window_closed")
            summary = pipeline.run(on_tick=on_tick)
            display.update(pipeline)
    finally:
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
        if window is not None:
            window.close()
        _close_outputs(tap)
    return summary


def _attach_outputs(job: Job, tap: RecordTap) -> None:
    """The JSONL log, the event store and the search index, attached to the tap."""
    log_path = effective_log(job)
    if log_path is not None and tap.jsonl is None:
        tap.jsonl = JsonlSink(log_path).open()
    if job.events_dir is not None and tap.events is None:
        from streamcap.events import EventStore

        tap.events = EventStore(job.events_dir, job.events_max_mb).open()
        tap.add_enricher(tap.events.enrich)
    if log_path is not None and job.index and tap.index is None:
        from streamcap.search import IndexWriter, index_path_for

        tap.index = IndexWriter(index_path_for(log_path), log_path=log_path, events_dir=job.events_dir).start()
        tap.subscribe(tap.index)


def _close_outputs(tap: RecordTap) -> None:
    if tap.events is not None:
        tap.events.close()
    tap.close()
    if tap.index is not None:
        tap.unsubscribe(tap.index)
        tap.index.close()


def _frame_callback(tap: RecordTap, on_frame: Callable | None) -> Callable | None:
    """The pipeline's ``on_frame``: the tap's frame fan-out, then the caller's own callback
    (whose exceptions stop the run, as before: it is the caller's code)."""
    if tap.events is None and not tap.has_frame_subscribers and on_frame is None:
        return None

    def frame_callback(result: Any, image: Any) -> None:
        tap.on_frame(result, image)
        if on_frame is not None:
            on_frame(result, image)

    frame_callback.wants_image = lambda result: on_frame is not None or tap.wants_image(result)  # type: ignore[attr-defined]
    return frame_callback


class _Display:
    """A progress bar for files, a statistics table for --stats, nothing otherwise."""

    def __init__(self, console: Console, job: Job, total: int) -> None:
        self.console = console
        self.job = job
        self.total = total
        self.progress: Progress | None = None
        self.live: Live | None = None
        self.task = None

    def __enter__(self) -> "_Display":
        if self.job.stats:
            self.live = Live(Table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        elif self.job.progress and self.job.command in ("file", "api"):
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[fps]:>6.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False)
            self.progress.__enter__()
            self.task = self.progress.add_task("frames", total=self.total or None, fps=0.0)
        return self

    def update(self, p: Pipeline) -> None:
        if self.progress is not None:
            written = p.stats.written
            t = self.progress.tasks[0]
            fps = written / t.elapsed if t.elapsed else 0.0
            self.progress.update(self.task, completed=written, fps=fps)
        if self.live is not None:
            snap = p.last_stats
            table = Table(title="streamcap", show_header=True)
            table.add_column("statistic")
            table.add_column("value", justify="right")
            for key, value in snap.items():
                table.add_row(key, str(value))
            for name, state in p._source_state.items():
                table.add_row(f"source {name}", str(state.get("status")))
            self.live.update(table)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        if self.live is not None:
            self.live.__exit__(*exc)


def run(
    source: str | list[str],
    *,
    out: str | Path | None = None,
    log: str | Path | None = None,
    segment: dict[str, Any] | bool = True,
    caption: dict[str, Any] | bool = True,
    on_result: Callable | None = None,
    on_frame: Callable | None = None,
    overwrite: bool = False,
    pipeline: PipelineConfig | None = None,
    stage: Any = None,
    captioner: Any = None,
    progress: bool = False,
    duration_s: float | None = None,
    events_dir: str | Path | None = None,
    events_max_mb: float = 500.0,
    index: bool = True,
    on_record: Callable[[dict], None] | None = None,
    tap: RecordTap | None = None,
    **source_options: Any,
) -> RunSummary:
    """Run streamcap from Python: one source (or several) through the models into sinks.

    ``segment``/``caption``: True for the defaults, False to leave the model out, or a dict of
    options (``SegmenterConfig`` fields; ``model``, ``beam``, ``every``, ``interval`` for
    captions). ``on_result(result)`` gets each ``FrameResult`` in order; ``on_frame(result,
    image)`` also gets the annotated image. ``on_record(record)`` gets every log record (the
    dict the JSONL line holds), with or without ``log``; ``tap`` is a ``streamcap.tap.RecordTap``
    with subscribers attached (see its rules). ``events_dir``: event snapshots (and the log at
    ``events_dir/events.jsonl`` when no ``log`` is given); ``index``: keep the log's search index
    (``LOG.index.sqlite``) up to date. ``source_options`` go to ``SourceConfig``
    (``stride``, ``drop``, ``rtsp_transport``, ``max_retries``, ...). Raises StreamcapError on
    bad input; the returned summary carries the exit code of anything that failed later.
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    configs = [SourceConfig(uri=str(s), **source_options) for s in sources]
    seg = None if segment is False else ({} if segment is True else dict(segment))
    cap = None if caption is False else ({"interval": 2.0} if caption is True else dict(caption))
    if cap is not None and cap.get("every") is None and cap.get("interval") is None:
        cap["interval"] = 2.0
    if cap is not None:
        every, interval = cap.get("every"), cap.get("interval")
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise BadInputError(f"caption every must be a whole number of frames, 1 or more; got {every!r}")
        if interval is not None and not (isinstance(interval, (int, float)) and interval >= 0):
            raise BadInputError(f"caption interval must be 0 or more seconds; got {interval!r}")
    job = Job(command="api", sources=configs, out=Path(out) if out else None, overwrite=overwrite,
              log=Path(log) if log else None, progress=progress, segment=seg, caption=cap,
              pipeline=pipeline or PipelineConfig(), duration_s=duration_s,
              events_dir=Path(events_dir) if events_dir else None, events_max_mb=events_max_mb, index=index)
    return run_job(job, on_result=on_result, on_frame=on_frame, stage=stage, captioner=captioner,
                   install_signals=threading.current_thread() is threading.main_thread(), tap=tap,
                   on_record=on_record)
