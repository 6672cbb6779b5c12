"""``streamcap train`` and ``streamcap evaluate``: thin forwards to training.train / training.evaluate.

Every argument after the command goes to the argparse parser of the training module, so
``streamcap train --help`` shows the same options (and dataset formats) as
``python -m training.train --help``.
"""

from __future__ import annotations

import typer

_FORWARD = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _forward(module_name: str, ctx: typer.Context) -> None:
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        typer.echo(f"streamcap: error: {module_name} is not importable ({err}); run from the "
                   "repository root or install streamcap with its training package", err=True)
        raise typer.Exit(2) from None
    try:
        code = module.main(list(ctx.args))
    except SystemExit as exc:  # argparse --help / usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    raise typer.Exit(code or 0)


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings=_FORWARD, add_help_option=False)
    def train_command(ctx: typer.Context) -> None:
        """Train the caption decoder (all arguments go to python -m training.train; try --help)."""
        _forward("training.train", ctx)

    @app.command("evaluate", context_settings=_FORWARD, add_help_option=False)
    def evaluate_command(ctx: typer.Context) -> None:
        """Evaluate a caption checkpoint: BLEU, CIDEr-D, baselines (see python -m training.evaluate --help)."""
        _forward("training.evaluate", ctx)
