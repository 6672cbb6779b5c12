"""The web commands: ``serve`` (the dashboard's history without cameras) and ``demo`` (uploads)."""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.cli.common import err_console, setup_logging
from streamcap.cli.options import (AuthToken, AuthTokenFile, Beam, CapModel, Device, LogFile, NoCaption, NoSegment,
                                   Score, SegModel, SegSize, SegWeights, Verbose)

Bind = Annotated[str, typer.Option("--bind", help="[HOST:]PORT to serve on (host 127.0.0.1 when left out; any other host needs a token).")]


def start_server(app, bind: str, token: str | None, token_file: Path | None):
    """Check the address and token, then start serving ``app``; returns the running server."""
    from streamcap.web.auth import parse_bind, resolve_token
    from streamcap.web.server import WebServer

    host, port = parse_bind(bind)
    app.token = resolve_token(host, token, token_file)
    server = WebServer(app, host, port).start()
    note = " (a token is needed)" if app.token else ""
    err_console.print(f"streamcap: serving on {server.url}{note}", highlight=False, markup=False)
    return server


def serve_until_stopped(server) -> None:
    """Block until Ctrl-C or SIGTERM, then close the server."""
    stop = threading.Event()
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        server.close()


def serve(
    events_dir: Annotated[Optional[Path], typer.Option("--events-dir", help="The events dir a monitor run wrote (snapshots).")] = None,
    log: LogFile = None,
    bind: Bind = "8080", auth_token: AuthToken = None, auth_token_file: AuthTokenFile = None,
    verbose: Verbose = False,
) -> None:
    """Serve the dashboard's history (timeline, snapshots, search) without running cameras.

    [bold]Example[/]

      streamcap serve --events-dir events/ --log captions.jsonl --bind 8080
    """
    from streamcap.errors import BadInputError
    from streamcap.web.history import History
    from streamcap.web.server import WebApp

    setup_logging(verbose)
    if events_dir is None and log is None:
        raise BadInputError("give --events-dir and/or --log: the history to serve")
    if events_dir is not None and not events_dir.is_dir():
        raise BadInputError(f"--events-dir {events_dir} is not a folder")
    if log is not None and not log.is_file():
        raise BadInputError(f"--log {log} does not exist")
    from streamcap.web.wiring import open_search

    if log is None and (events_dir / "events.jsonl").is_file():  # monitor --events-dir without --log
        log = events_dir / "events.jsonl"
    history = History(log=log, events_dir=events_dir)
    app = WebApp(history=history, events_dir=events_dir, search=open_search(log, events_dir, history))
    serve_until_stopped(start_server(app, bind, auth_token, auth_token_file))


def demo(
    bind: Bind = "7860", auth_token: AuthToken = None, auth_token_file: AuthTokenFile = None,
    no_segment: NoSegment = False, seg_model: SegModel = "v1", seg_weights: SegWeights = None,
    seg_size: SegSize = None, score_threshold: Score = 0.5, no_caption: NoCaption = False,
    caption_model: CapModel = None, beam: Beam = 3, device: Device = "auto",
    max_image_mb: Annotated[float, typer.Option("--max-image-mb", min=0.1, help="Largest image upload.")] = 10.0,
    max_video_mb: Annotated[float, typer.Option("--max-video-mb", min=0.1, help="Largest video upload.")] = 50.0,
    max_video_s: Annotated[float, typer.Option("--max-video-s", min=0.1, help="Longest video upload, seconds.")] = 30.0,
    verbose: Verbose = False,
) -> None:
    """A page where you upload an image or a short video and get its masks, caption and
    per-word attention maps (a video comes back annotated).

    [bold]Example[/]

      streamcap demo --bind 7860     then open http://127.0.0.1:7860/demo
    """
    from streamcap.cli.common import check_device
    from streamcap.web.demo import Demo
    from streamcap.web.server import WebApp

    setup_logging(verbose)
    check_device(device)
    seg = None if no_segment else dict(model=seg_model, weights=seg_weights, seg_size=seg_size,
                                       score_threshold=score_threshold, device=device)
    cap = None if no_caption else dict(model=str(caption_model) if caption_model else None, beam=beam, device=device)
    with tempfile.TemporaryDirectory(prefix="streamcap-demo-") as tmp:
        app = WebApp(demo=Demo(Path(tmp), segment=seg, caption=cap, max_image_mb=max_image_mb,
                               max_video_mb=max_video_mb, max_video_s=max_video_s))
        server = start_server(app, bind, auth_token, auth_token_file)
        err_console.print(f"streamcap: the demo page is {server.url}demo", highlight=False, markup=False)
        serve_until_stopped(server)


def register(app: typer.Typer) -> None:
    from streamcap.web.bench import register as register_bench

    app.command()(serve)
    app.command()(demo)
    register_bench(app)
