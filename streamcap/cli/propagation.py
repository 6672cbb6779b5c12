"""CLI command ``streamcap bench-propagation`` (logic in bench_propagation.py).

``streamcap.cli.app`` imports this module and calls ``register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.errors import StreamcapError

HELP = """Measure masks carried between keyframes against hand-drawn masks (DAVIS layout).

ROOT holds SEQ/frames/*.jpg and SEQ/masks/*.png (one mask per frame, same stem). The mask of
frames 0, K, 2K, ... is the keyframe; the frames between are carried with the code the live path
uses, written to OUT/SEQ/STEM.png (0/255) for the first --method, and scored: J (mean IoU over the
carried frames) per method and for hold (the keyframe mask copied), and ms per carried frame on
one OpenCV thread.

Methods: carry (default) | hold | warp[:PRESET][@SCALE], PRESET = ultrafast | fast | medium
(plain backward warp of the previous mask with OpenCV DIS at SCALE of the frame size).

\b
Examples:
  streamcap bench-propagation ../shared/davis --every 12 --out /tmp/pred
  streamcap bench-propagation ../shared/davis --every 12 --out /tmp/pred --method carry --method warp:medium@0.5 --method warp:medium@1
  streamcap bench-propagation ../shared/davis --every 12 --out /tmp/pred --seq camel --seq cows --json
"""


def bench_propagation_command(
    root: Annotated[Path, typer.Argument(help="Folder of sequences: SEQ/frames/*.jpg, SEQ/masks/*.png.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Write carried masks to OUT/SEQ/STEM.png.")],
    every: Annotated[int, typer.Option("--every", help="A keyframe (given mask) every K frames.")] = 12,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="carry | hold | warp[:PRESET][@SCALE]; repeat to compare (the first is written).")] = None,
    seq: Annotated[Optional[list[str]], typer.Option("--seq", help="Only this sequence (repeatable).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    from rich.console import Console

    from streamcap.bench_propagation import print_report, run

    err = Console(stderr=True)
    try:
        report = run(root, every, out, method or [], seq,
                     progress=None if json_out else lambda r: err.print(f"  {r['sequence']}: done", highlight=False))
    except StreamcapError as e:
        typer.echo(f"streamcap: error: {e}", err=True)
        raise SystemExit(e.exit_code) from None
    print_report(report, json_out, Console(width=200))


def register(app: typer.Typer) -> None:
    app.command("bench-propagation", help=HELP, no_args_is_help=True)(bench_propagation_command)
