"""Helpers every command shares: the error console, logging, error handling, image lists, devices."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import typer
from rich.console import Console

from streamcap.errors import BadInputError, StreamcapError

err_console = Console(stderr=True, soft_wrap=True)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def positive(value):
    """Option callback: a number of seconds that must be more than 0 (None: not given)."""
    if value is not None and not value > 0:  # also refuses nan
        raise typer.BadParameter(f"must be more than 0, got {value}")
    return value



def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger("streamcap")
    if not root.handlers:
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


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


def fail(err: "StreamcapError | str", code: int = 2) -> typer.Exit:
    """One red line on stderr; the exit to raise (the error's own code, else ``code``)."""
    message = str(err)
    if isinstance(err, StreamcapError):
        code = err.exit_code
    err_console.print(f"streamcap: error: {message}", style="red", highlight=False, markup=False)
    return typer.Exit(code)


def expand_images(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given -> image paths.

    BadInputError names the first argument that gives no image."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise BadInputError(f"folder {p} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(os.path.expanduser(item), recursive=True) if Path(q).is_file())
            if not found:
                raise BadInputError(f"no images match {item}")
            paths.extend(found)
        else:
            raise BadInputError(f"image {item} does not exist")
    return paths


def check_device(device: str) -> str:
    """``--device`` as given, or BadInputError for a name torch would not take."""
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise BadInputError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")
