"""The Typer app: parses options into a Job and calls one function; no logic of its own."""

from __future__ import annotations

import os

# The command line owns the process: keep OpenCV's and FFmpeg's own chatter off stderr so an
# error is one line (set before cv2 is first imported; a user's own setting wins).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import importlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from streamcap.capture import SourceConfig  # noqa: E402
from streamcap.errors import EXIT_INTERNAL, StreamcapError  # noqa: E402
from streamcap.pipeline import PipelineConfig  # noqa: E402

app = typer.Typer(
    name="streamcap",
    help="Watch video and say what is in it: segment every object, caption the scene.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

err_console = Console(stderr=True, soft_wrap=True)

# -- shared options ------------------------------------------------------------------------------
def _positive(value):
    """Option callback: a number of seconds that must be more than 0 (None: not given)."""
    if value is not None and not value > 0:  # also refuses nan
        raise typer.BadParameter(f"must be more than 0, got {value}")
    return value


Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the annotated video here: .mp4/.mov/.m4v/.mkv (H.264) or .avi (MPEG-4 Part 2).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]
Codec = Annotated[str, typer.Option("--codec", help="auto (H.264 via PyAV, else mp4v; mp4v in .avi) | h264 | mp4v.")]
LogFile = Annotated[Optional[Path], typer.Option("--log", help="Append JSONL records here (schema in README).")]
LogEvery = Annotated[int, typer.Option("--log-every", min=0, help="A frame record every N processed frames (0: none).")]
LogMasks = Annotated[bool, typer.Option("--log-masks", help="Add COCO RLE masks to frame records.")]
Stride = Annotated[int, typer.Option("--stride", min=1, help="Take every Nth frame (others are grabbed, not decoded).")]
Drop = Annotated[Optional[str], typer.Option("--drop", help="latest (live default: newest frame wins) | block (file default: lose nothing).")]
QueueSize = Annotated[int, typer.Option("--queue-size", min=1, help="Frames buffered between capture and inference.")]
Transport = Annotated[Optional[str], typer.Option("--rtsp-transport", help="tcp | udp for RTSP sources.")]
MaxRetries = Annotated[Optional[int], typer.Option("--max-retries", min=0, help="After a failed connect, retry N more times (N+1 attempts per outage), then give up (default: retry forever).")]
OpenTimeout = Annotated[float, typer.Option("--open-timeout", callback=_positive, help="Seconds to wait for a stream to open.")]
ReadTimeout = Annotated[float, typer.Option("--read-timeout", callback=_positive, help="Seconds without any packet from a stream before the connection counts as lost.")]
FirstFrameTimeout = Annotated[float, typer.Option("--first-frame-timeout", callback=_positive, help="Seconds a stream that sends data may take to deliver its first keyframe (cameras with keyframes far apart).")]
BackoffMax = Annotated[float, typer.Option("--backoff-max", callback=_positive, help="Longest wait between reconnect attempts, seconds (backoff starts at 0.5 s and doubles).")]
Watchdog = Annotated[float, typer.Option("--watchdog", callback=_positive, help="Reconnect a live source silent for this many seconds.")]
Show = Annotated[bool, typer.Option("--show", help="Show a window (needs a display).")]
Stats = Annotated[bool, typer.Option("--stats", help="Show live statistics (fps, drops, queues, latency).")]
Hud = Annotated[bool, typer.Option("--hud", help="Draw the statistics onto the frames.")]
StatsInterval = Annotated[float, typer.Option("--stats-interval", min=0.0, help="Seconds between stats records in the log (0: none).")]
OnError = Annotated[str, typer.Option("--on-stage-error", help="skip (count the frame, stop after 5 in a row) | stop.")]
NoSegment = Annotated[bool, typer.Option("--no-segment", help="Run without the segmenter.")]
SegModel = Annotated[str, typer.Option("--seg-model", help="v1 (maskrcnn_resnet50_fpn) | v2 (maskrcnn_resnet50_fpn_v2).")]
SegWeights = Annotated[Optional[str], typer.Option("--seg-weights", help="State dict file, or 'random' (untrained, for tests and benchmarks).")]
SegSize = Annotated[Optional[int], typer.Option("--seg-size", min=0, help="Short side the model sees (default: 512 on CPU; on GPU 800, smaller frames as they are; 0: full frame).")]
Score = Annotated[float, typer.Option("--score-threshold", min=0.0, max=1.0, help="Keep detections scoring at least this.")]
MaskThr = Annotated[float, typer.Option("--mask-threshold", min=0.0, max=1.0, help="Mask probability threshold.")]
Classes = Annotated[Optional[str], typer.Option("--classes", help="Comma-separated COCO class names to keep, e.g. person,car.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16.")]
MaxDet = Annotated[int, typer.Option("--max-detections", min=1, help="At most this many objects per frame.")]
Batch = Annotated[Optional[int], typer.Option("--batch", min=1, help="Frames per model call (default: 1 on CPU, 4 on GPU).")]
NoCaption = Annotated[bool, typer.Option("--no-caption", help="Run without scene captions.")]
CapModel = Annotated[Optional[Path], typer.Option("--caption-model", help="Caption checkpoint (default: the bundled model).")]
CapEvery = Annotated[Optional[int], typer.Option("--caption-every", min=1, help="Caption every N processed frames.")]
CapInterval = Annotated[Optional[float], typer.Option("--caption-interval", min=0.0, help="Caption every T seconds of stream time (default 2.0; 0: every processed frame).")]
Beam = Annotated[int, typer.Option("--beam", min=1, help="Beam width for captions.")]
SegEvery = Annotated[str, typer.Option("--seg-every", help="Run the segmenter on every Nth frame (keyframes) and carry its masks to the frames between with optical flow; auto: whenever it is free (live default). 1: every frame (file default, exact).")]
NoTrack = Annotated[bool, typer.Option("--no-track", help="No tracking ids (no #id on the tags, no track_id in the log).")]
MaxFps = Annotated[Optional[float], typer.Option("--max-fps", callback=_positive, help="With keyframes on a live source: draw and write at most this many frames a second.")]
Duration = Annotated[Optional[float], typer.Option("--duration", callback=_positive, help="Stop after this many seconds.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log source events and warnings to stderr.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger("streamcap")
    if not root.handlers:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _seg_options(no_segment, seg_model, seg_weights, seg_size, score, mask_thr, classes, device, max_det, batch,
                 precision="auto"):
    if no_segment:
        return None
    return dict(model=seg_model, weights=seg_weights, seg_size=seg_size, score_threshold=score,
                mask_threshold=mask_thr, classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else (),
                device=device, max_detections=max_det, batch=batch, precision=precision)


def _caption_options(no_caption, model, every, interval, beam, device):
    if no_caption:
        return None
    if every is None and interval is None:
        interval = 2.0
    return dict(model=str(model) if model else None, every=every, interval=interval, beam=beam, device=device)


def _model_options(opts: dict) -> dict:
    """The pipeline, segment and caption parts of a Job from a command's parsed options."""
    return dict(
        pipeline=PipelineConfig(stats_interval_s=opts["stats_interval"], log_every=opts["log_every"],
                                log_masks=opts["log_masks"], on_stage_error=opts["on_stage_error"],
                                seg_every=_seg_every(opts["seg_every"], opts["no_segment"]), track=not opts["no_track"],
                                max_fps=opts.get("max_fps")),
        segment=_seg_options(opts["no_segment"], opts["seg_model"], opts["seg_weights"], opts["seg_size"],
                             opts["score_threshold"], opts["mask_threshold"], opts["classes"], opts["device"],
                             opts["max_detections"], opts["batch"], opts["precision"]),
        caption=_caption_options(opts["no_caption"], opts["caption_model"], opts["caption_every"],
                                 opts["caption_interval"], opts["beam"], opts["device"]))


def _seg_every(value: str, no_segment: bool = False):
    """--seg-every checked; 1 without a segmenter (no objects to carry)."""
    from streamcap.keyframes import parse_seg_every

    every = parse_seg_every(value)
    return 1 if no_segment else every


def _live_queue(queue_size, seg_every: str, no_segment: bool) -> int:
    """Live default: one frame (newest wins) when every frame is segmented; with keyframes a few,
    so that a short stall of the carry worker loses no frame."""
    if queue_size is not None:
        return queue_size
    return 1 if _seg_every(seg_every, no_segment) == 1 else 8


def _run(job) -> None:
    from streamcap.runner import run_job

    summary = run_job(job, console=err_console)
    fps = summary.written / summary.elapsed_s if summary.elapsed_s else 0.0
    parts = [f"{summary.written} frames written in {summary.elapsed_s:.1f}s ({fps:.1f} fps)",
             f"{summary.dropped} dropped"]
    if summary.stage_errors:
        parts.append(f"{summary.stage_errors} stage errors")
    if summary.frame_errors:
        parts.append(f"{summary.frame_errors} unreadable frames skipped")
    if summary.output:
        parts.append(f"video: {summary.output}{' (PARTIAL)' if summary.output_partial else ''} ({summary.encoder})")
    err_console.print("streamcap: " + ", ".join(parts) + f"; ended: {summary.reason}", highlight=False, markup=False)
    if summary.error:
        err_console.print(f"streamcap: error: {summary.error}", style="red", highlight=False, markup=False)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _source(uri: str, **kw) -> SourceConfig:
    return SourceConfig(uri=uri, **kw)


def handles_errors(func):
    """Turn a StreamcapError into one red line and its exit code, and Ctrl-C outside a run
    (while a model loads) into 130, whatever typer version runs the command (also under
    CliRunner). Applied to every command by ``_guard_commands``."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except StreamcapError as err:
            err_console.print(f"streamcap: error: {err}", style="red", highlight=False, markup=False)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    wrapper._streamcap_guarded = True
    return wrapper


@app.command()
def file(
    input: Annotated[str, typer.Argument(help="Video file, image, folder of images, or glob.")],
    out: Out = None, overwrite: Overwrite = False, codec: Codec = "auto", log: LogFile = None,
    log_every: LogEvery = 1, log_masks: LogMasks = False, stride: Stride = 1, drop: Drop = None,
    queue_size: QueueSize = 4, show: Show = False, stats: Stats = False, hud: Hud = False,
    stats_interval: StatsInterval = 10.0, on_stage_error: OnError = "skip",
    no_segment: NoSegment = False, seg_model: SegModel = "v1", seg_weights: SegWeights = None,
    seg_size: SegSize = None, score_threshold: Score = 0.5, mask_threshold: MaskThr = 0.5,
    classes: Classes = None, device: Device = "auto", precision: Precision = "auto", max_detections: MaxDet = 100,
    batch: Batch = None,
    no_caption: NoCaption = False, caption_model: CapModel = None, caption_every: CapEvery = None,
    caption_interval: CapInterval = None, beam: Beam = 3, seg_every: SegEvery = "1", no_track: NoTrack = False,
    verbose: Verbose = False,
) -> None:
    """Process a video file (or images) frame by frame; nothing is dropped.

    [bold]Examples[/]

      streamcap file samples/vtest_8s.mp4 --out annotated.mp4

      streamcap file input.mp4 --out annotated.mp4 --log captions.jsonl --seg-size 480

      streamcap file photos/ --out slideshow.mp4 --no-caption

      streamcap file input.mp4 --out fast.mp4 --seg-every 4   (keyframes; same output every run)
    """
    from streamcap.runner import Job

    _setup_logging(verbose)
    from streamcap.capture import source_kind

    # `file` always reads from disk: a number or URL here is a file name, never a camera.
    kind = "images" if source_kind(input) == "images" else "file"
    src = _source(input, kind=kind, drop=drop, stride=stride, queue_size=queue_size)
    _run(Job(command="file", sources=[src], out=out, overwrite=overwrite, codec=codec, log=log, show=show,
             stats=stats, hud=hud, argv=sys.argv[1:],
             **_model_options(locals())))


@app.command()
def live(
    source: Annotated[str, typer.Option("--source", "-s", help="Webcam index (0), RTSP/RTMP/HTTP URL, or a file played in real time.")] = "0",
    out: Out = None, overwrite: Overwrite = False, codec: Codec = "auto", log: LogFile = None,
    log_every: LogEvery = 1, log_masks: LogMasks = False, stride: Stride = 1, drop: Drop = None,
    queue_size: QueueSize = None, rtsp_transport: Transport = None, max_retries: MaxRetries = None,
    open_timeout: OpenTimeout = 10.0, read_timeout: ReadTimeout = 5.0, first_frame_timeout: FirstFrameTimeout = 30.0,
    watchdog: Watchdog = 10.0,
    backoff_max: BackoffMax = 30.0,
    show: Show = False, stats: Stats = False, hud: Hud = False, stats_interval: StatsInterval = 10.0,
    on_stage_error: OnError = "skip",
    no_segment: NoSegment = False, seg_model: SegModel = "v1", seg_weights: SegWeights = None,
    seg_size: SegSize = None, score_threshold: Score = 0.5, mask_threshold: MaskThr = 0.5,
    classes: Classes = None, device: Device = "auto", precision: Precision = "auto", max_detections: MaxDet = 100,
    batch: Batch = None,
    no_caption: NoCaption = False, caption_model: CapModel = None, caption_every: CapEvery = None,
    caption_interval: CapInterval = None, beam: Beam = 3, seg_every: SegEvery = "auto", no_track: NoTrack = False,
    max_fps: MaxFps = None, duration: Duration = None, verbose: Verbose = False,
) -> None:
    """Watch a live source with bounded latency: the newest frame wins, stale ones are dropped.

    [bold]Examples[/]

      streamcap live --source 0 --show

      streamcap live --source rtsp://camera/stream --out clip.mp4 --log events.jsonl --stats

    A file given as --source is played at its own frame rate, like a camera.
    Every frame is drawn and written; the segmenter runs on the newest frame whenever it is free
    and its masks are carried to the frames between (--seg-every 1: segment every frame, dropping
    the frames it cannot keep up with).
    """
    from streamcap.runner import Job

    _setup_logging(verbose)
    # A file given as a live source is played at its own frame rate and may drop frames.
    realtime = not (source.isdigit() or "://" in source)
    src = _source(source, kind="file" if realtime else None, realtime=realtime, drop=drop or "latest",
                  stride=stride, queue_size=_live_queue(queue_size, seg_every, no_segment), rtsp_transport=rtsp_transport,
                  max_retries=max_retries, open_timeout_s=open_timeout, read_timeout_s=read_timeout,
                  first_frame_timeout_s=first_frame_timeout, watchdog_s=watchdog, backoff_max_s=backoff_max)
    _run(Job(command="live", sources=[src], out=out, overwrite=overwrite, codec=codec, log=log, show=show,
             stats=stats, hud=hud, argv=sys.argv[1:], duration_s=duration,
             **_model_options(locals())))


@app.command()
def monitor(
    urls: Annotated[list[str], typer.Argument(help="One or more camera URLs (or webcam indexes).")],
    log: LogFile = None, log_every: LogEvery = 1, log_masks: LogMasks = False, stride: Stride = 1,
    drop: Drop = None, queue_size: QueueSize = None, rtsp_transport: Transport = None,
    max_retries: MaxRetries = None, open_timeout: OpenTimeout = 10.0, read_timeout: ReadTimeout = 5.0,
    first_frame_timeout: FirstFrameTimeout = 30.0,
    watchdog: Watchdog = 10.0, backoff_max: BackoffMax = 30.0, stats: Stats = False,
    stats_interval: StatsInterval = 10.0,
    on_stage_error: OnError = "skip",
    no_segment: NoSegment = False, seg_model: SegModel = "v1", seg_weights: SegWeights = None,
    seg_size: SegSize = None, score_threshold: Score = 0.5, mask_threshold: MaskThr = 0.5,
    classes: Classes = None, device: Device = "auto", precision: Precision = "auto", max_detections: MaxDet = 100,
    batch: Batch = None,
    no_caption: NoCaption = False, caption_model: CapModel = None, caption_every: CapEvery = None,
    caption_interval: CapInterval = None, beam: Beam = 3, seg_every: SegEvery = "1", no_track: NoTrack = False,
    max_fps: MaxFps = None, duration: Duration = None, verbose: Verbose = False,
) -> None:
    """Headless monitoring of several cameras in one process, logging to JSONL.

    Each camera has its own capture thread and reconnects by itself; one camera failing never
    stops the others. Records are tagged with the camera's name (credentials removed).

    [bold]Example[/]

      streamcap monitor rtsp://camera1/stream rtsp://camera2/stream --log captions.jsonl
    """
    from streamcap.runner import Job

    _setup_logging(verbose)
    if len(set(urls)) != len(urls):
        raise _fail("the same URL is given twice")
    sources = [_source(u, kind="webcam" if u.isdigit() else "stream", drop=drop, stride=stride,
                       queue_size=_live_queue(queue_size, seg_every, no_segment), rtsp_transport=rtsp_transport,
                       max_retries=max_retries,
                       open_timeout_s=open_timeout, read_timeout_s=read_timeout,
                       first_frame_timeout_s=first_frame_timeout, watchdog_s=watchdog,
                       backoff_max_s=backoff_max)
               for u in urls]
    _run(Job(command="monitor", sources=sources, log=log, stats=stats, argv=sys.argv[1:], progress=False,
             duration_s=duration,
             **_model_options(locals())))


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"streamcap: error: {message}", style="red", highlight=False, markup=False)
    return typer.Exit(code)


# Command groups that live in their own modules; each exposes register(app).
_COMMAND_MODULES = ("streamcap.bench", "streamcap.cli_segment", "streamcap.cli_caption", "streamcap.cli_train",
                    "streamcap.soak", "streamcap.cli_propagation", "streamcap.bench_segmenter")


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register(app)


_register_commands()


def _guard_commands(typer_app: typer.Typer) -> None:
    """Wrap every registered command (sub-apps too) in handles_errors, once."""
    for info in typer_app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_streamcap_guarded", False):
            info.callback = handles_errors(info.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_commands(group.typer_instance)


_guard_commands(app)


def main() -> None:
    """Entry point: one line and a documented exit code for every error the user can fix.

    Typer runs in its standalone mode, so usage errors (an unknown option or command, a
    missing argument, a value out of range) are reported the way typer reports them, exit 2,
    whichever click typer uses (its own copy from 0.28 on, the click package before;
    tested with typer 0.20 to 0.29, the range pyproject.toml allows). Errors
    raised inside a command are turned into their exit code by ``handles_errors``.
    """
    try:
        app()
    except SystemExit:
        raise
    except StreamcapError as err:
        err_console.print(f"streamcap: error: {err}", style="red", highlight=False, markup=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        from streamcap.capture import redact_url

        err_console.print(f"streamcap: internal error: {type(err).__name__}: {redact_url(str(err))}",
                          style="red", highlight=False, markup=False)
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
