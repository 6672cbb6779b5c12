"""The Typer app: parses options into config objects and calls one function per command."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="streamcap",
    help="Watch video and say what is in it: segment every object, caption the scene.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command groups that live in their own modules; each exposes register(app).
_COMMAND_MODULES = ("streamcap.cli_segment", "streamcap.cli_caption", "streamcap.cli_train")


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


def main() -> None:
    app()
