"""The Typer app: every command registered, every error turned into one line and its exit code."""

from __future__ import annotations

import os

# The command line owns the process: keep OpenCV's and FFmpeg's own chatter off stderr so an
# error is one line (set before cv2 is first imported; a user's own setting wins).
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import importlib  # noqa: E402
import sys  # noqa: E402

import typer  # noqa: E402

from streamcap.cli.common import err_console, handles_errors  # noqa: E402
from streamcap.errors import EXIT_INTERNAL, StreamcapError  # noqa: E402

app = typer.Typer(
    name="streamcap",
    help="Watch video and say what is in it: segment every object, caption the scene.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Command groups that live in their own modules; each exposes register(app).
_COMMAND_MODULES = ("streamcap.cli.run", "streamcap.bench", "streamcap.cli.segment", "streamcap.cli.caption",
                    "streamcap.cli.train", "streamcap.soak", "streamcap.cli.propagation",
                    "streamcap.bench_segmenter", "streamcap.cli.search", "streamcap.search.bench", "streamcap.cli.serve")


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
