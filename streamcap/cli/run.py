"""The video commands (``file``, ``live``, ``monitor``): parse options into a Job and run it."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from streamcap.capture import SourceConfig
from streamcap.cli.common import err_console, fail, setup_logging
from streamcap.cli.notify import notify_tap, report_notify
from streamcap.cli.options import *  # noqa: F403  (the option types)
from streamcap.pipeline import PipelineConfig


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


def _run(job, tap=None) -> None:
    from streamcap.runner import run_job
    from streamcap.tap import RecordTap

    tap = tap if tap is not None else RecordTap()
    summary = run_job(job, console=err_console, tap=tap)
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
    _report_history(tap)
    report_notify(tap, err_console)
    if summary.error:
        err_console.print(f"streamcap: error: {summary.error}", style="red", highlight=False, markup=False)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _report_history(tap) -> None:
    """One line each for the event snapshots and the search index, when the run kept them."""
    if tap.events is not None:
        u = tap.events.usage()
        line = (f"streamcap: events: {u['written']} snapshots written, {u['files']} in {u['dir']} "
                f"({u['bytes'] / 1e6:.1f} of {u['max_bytes'] / 1e6:.0f} MB)")
        if u["removed"]:
            line += f", {u['removed']} oldest removed ({u['removed_bytes'] / 1e6:.1f} MB)"
        if u["errors"]:
            line += f", {u['errors']} could not be written"
        err_console.print(line, highlight=False, markup=False)
    if tap.index is not None:
        u = tap.index.usage()
        line = f"streamcap: search index: {u['index']} (+{u['rows']} entries)"
        if u["dropped"] or u["error"]:
            line += (f"; incomplete ({u['dropped']} records dropped{', ' + u['error'] if u['error'] else ''}):"
                     f" rebuild with streamcap index")
        err_console.print(line, highlight=False, markup=False)
    if tap.subscriber_errors:
        err_console.print(f"streamcap: {tap.subscriber_errors} record subscriber errors (see the warnings above)",
                          highlight=False, markup=False)


def _events_options(opts: dict) -> dict:
    """The Job fields for --events-dir, --events-max-mb and --no-index."""
    return dict(events_dir=opts.get("events_dir"), events_max_mb=opts.get("events_max_mb") or 500.0,
                index=not opts.get("no_index", False))


def _source(uri: str, **kw) -> SourceConfig:
    return SourceConfig(uri=uri, **kw)


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
    events_dir: EventsDir = None, events_max_mb: EventsMaxMb = 500.0, no_index: NoIndex = False,
    alerts: AlertsFile = None, alert_object: AlertObject = None, alert_caption: AlertCaption = None,
    alert_cooldown: AlertCooldown = 30.0, alert_min_duration: AlertMinDuration = 0.0, webhook: Webhook = None,
    webhook_snapshot: WebhookSnapshot = "auto", public_url: PublicUrl = None,
    mqtt: Mqtt = None, mqtt_user: MqttUser = None, mqtt_password_file: MqttPasswordFile = None,
    mqtt_topic: MqttTopic = "streamcap", metrics_port: MetricsPort = None,
) -> None:
    """Process a video file (or images) frame by frame; nothing is dropped.

    [bold]Examples[/]

      streamcap file samples/vtest_8s.mp4 --out annotated.mp4

      streamcap file input.mp4 --out annotated.mp4 --log captions.jsonl --seg-size 480

      streamcap file photos/ --out slideshow.mp4 --no-caption

      streamcap file input.mp4 --out fast.mp4 --seg-every 4   (keyframes; same output every run)
    """
    from streamcap.runner import Job

    setup_logging(verbose)
    from streamcap.capture import source_kind

    # `file` always reads from disk: a number or URL here is a file name, never a camera.
    kind = "images" if source_kind(input) == "images" else "file"
    src = _source(input, kind=kind, drop=drop, stride=stride, queue_size=queue_size)
    tap = notify_tap(locals(), [src])
    _run(Job(command="file", sources=[src], out=out, overwrite=overwrite, codec=codec, log=log, show=show,
             stats=stats, hud=hud, argv=sys.argv[1:],
             **_events_options(locals()), **_model_options(locals())), tap=tap)


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
    events_dir: EventsDir = None, events_max_mb: EventsMaxMb = 500.0, no_index: NoIndex = False,
    alerts: AlertsFile = None, alert_object: AlertObject = None, alert_caption: AlertCaption = None,
    alert_cooldown: AlertCooldown = 30.0, alert_min_duration: AlertMinDuration = 0.0, webhook: Webhook = None,
    webhook_snapshot: WebhookSnapshot = "auto", public_url: PublicUrl = None,
    mqtt: Mqtt = None, mqtt_user: MqttUser = None, mqtt_password_file: MqttPasswordFile = None,
    mqtt_topic: MqttTopic = "streamcap", metrics_port: MetricsPort = None,
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

    setup_logging(verbose)
    # A file given as a live source is played at its own frame rate and may drop frames.
    realtime = not (source.isdigit() or "://" in source)
    src = _source(source, kind="file" if realtime else None, realtime=realtime, drop=drop or "latest",
                  stride=stride, queue_size=_live_queue(queue_size, seg_every, no_segment), rtsp_transport=rtsp_transport,
                  max_retries=max_retries, open_timeout_s=open_timeout, read_timeout_s=read_timeout,
                  first_frame_timeout_s=first_frame_timeout, watchdog_s=watchdog, backoff_max_s=backoff_max)
    tap = notify_tap(locals(), [src])
    _run(Job(command="live", sources=[src], out=out, overwrite=overwrite, codec=codec, log=log, show=show,
             stats=stats, hud=hud, argv=sys.argv[1:], duration_s=duration,
             **_events_options(locals()), **_model_options(locals())), tap=tap)


def monitor(
    urls: Annotated[Optional[list[str]], typer.Argument(help="One or more camera URLs (or webcam indexes).")] = None,
    config: CameraConfigFile = None, ray: RayAddress = None,
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
    events_dir: EventsDir = None, events_max_mb: EventsMaxMb = 500.0, no_index: NoIndex = False,
    alerts: AlertsFile = None, alert_object: AlertObject = None, alert_caption: AlertCaption = None,
    alert_cooldown: AlertCooldown = 30.0, alert_min_duration: AlertMinDuration = 0.0, webhook: Webhook = None,
    webhook_snapshot: WebhookSnapshot = "auto", public_url: PublicUrl = None,
    mqtt: Mqtt = None, mqtt_user: MqttUser = None, mqtt_password_file: MqttPasswordFile = None,
    mqtt_topic: MqttTopic = "streamcap", metrics_port: MetricsPort = None,
    serve: Serve = None, auth_token: AuthToken = None, auth_token_file: AuthTokenFile = None, serve_fps: ServeFps = 5.0,
    serve_width: ServeWidth = 480,
) -> None:
    """Headless monitoring of several cameras in one process, logging to JSONL.

    Each camera has its own capture thread and reconnects by itself; one camera failing never
    stops the others. Records are tagged with the camera's name (credentials removed).

    [bold]Example[/]

      streamcap monitor rtsp://camera1/stream rtsp://camera2/stream --log captions.jsonl

      streamcap monitor --config cameras.yaml --ray auto --log captions.jsonl   (on a Ray cluster)

      streamcap monitor rtsp://camera1/stream --events-dir events/ --serve 8080   (web dashboard)
    """
    from streamcap.runner import Job

    setup_logging(verbose)
    if config is not None or ray is not None:
        from streamcap.cluster.monitor import monitor_cameras

        return monitor_cameras(dict(locals()))
    if not urls:
        raise fail("give one or more camera URLs, or --config cameras.yaml")
    if len(set(urls)) != len(urls):
        raise fail("the same URL is given twice")
    sources = [_source(u, kind="webcam" if u.isdigit() else "stream", drop=drop, stride=stride,
                       queue_size=_live_queue(queue_size, seg_every, no_segment), rtsp_transport=rtsp_transport,
                       max_retries=max_retries,
                       open_timeout_s=open_timeout, read_timeout_s=read_timeout,
                       first_frame_timeout_s=first_frame_timeout, watchdog_s=watchdog,
                       backoff_max_s=backoff_max)
               for u in urls]
    from streamcap.tap import RecordTap
    from streamcap.web.auth import redact_argv
    from streamcap.web.wiring import start_dashboard

    tap = notify_tap(locals(), sources, RecordTap())
    dashboard = start_dashboard(tap, serve, auth_token, auth_token_file, sources, log, events_dir, not no_index,
                                serve_fps, serve_width)
    try:
        _run(Job(command="monitor", sources=sources, log=log, stats=stats, argv=redact_argv(sys.argv[1:]), progress=False,
                 duration_s=duration,
                 **_events_options(locals()), **_model_options(locals())), tap=tap)
    finally:
        if dashboard is not None:
            dashboard.close()




def register(app: typer.Typer) -> None:
    app.command()(file)
    app.command()(live)
    app.command()(monitor)
