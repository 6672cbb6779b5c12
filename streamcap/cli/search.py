"""``streamcap index LOG`` (rebuild a log's search index) and ``streamcap search INDEX_OR_LOG TEXT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.cli.common import err_console


def _progress(total: int, description: str):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err_console, transient=True)
    task = progress.add_task(description, total=total or None)
    return progress, lambda offset: progress.update(task, completed=offset)


def index(
    log: Annotated[Path, typer.Argument(help="A streamcap JSONL log.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Index file (default: beside the log, NAME.index.sqlite).")] = None,
    events_dir: Annotated[Optional[Path], typer.Option("--events-dir", help="The events folder the log's snapshots are in (remembered in the index).")] = None,
) -> None:
    """Rebuild the search index of a log from scratch (lines that are not JSON are skipped and counted).

    [bold]Example[/]

      streamcap index captions.jsonl
    """
    from streamcap.errors import BadInputError
    from streamcap.search import build_index

    if not log.is_file():
        raise BadInputError(f"log {log} does not exist" if not log.exists() else f"not a file: {log}")
    progress, update = _progress(log.stat().st_size, "indexing")
    with progress:
        stats = build_index(log, out, on_progress=update, events_dir=str(events_dir) if events_dir else None)
    rate = stats["records"] / stats["seconds"] if stats["seconds"] else 0.0
    line = (f"streamcap: indexed {stats['records']} records ({stats['rows']} entries) in {stats['seconds']:.1f}s "
            f"({rate:,.0f} records/s) into {stats['index']}")
    if stats["skipped"]:
        line += f"; {stats['skipped']} malformed lines skipped"
    err_console.print(line, highlight=False, markup=False)


def search(
    source: Annotated[Path, typer.Argument(help="A search index (.index.sqlite) or a JSONL log (its index is built or updated).")],
    text: Annotated[str, typer.Argument(help='What to find: words (all required), "a phrase", word*, a OR b, -word.')],
    camera: Annotated[Optional[str], typer.Option("--camera", help="Only this camera (its name as logged).")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only the last 90s, 30m, 2h, 1d, 1h30m...")] = None,
    order: Annotated[str, typer.Option("--order", help="best (rank) | newest.")] = "best",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many results.")] = 20,
    kind: Annotated[Optional[str], typer.Option("--kind", help="Only caption, objects or alert entries (comma-separated).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per result, one a line.")] = False,
) -> None:
    """Find captions, object labels and alerts in a log's search index.

    [bold]Examples[/]

      streamcap search captions.jsonl "dog on sofa"

      streamcap search captions.index.sqlite dog --camera cam1 --since 2h --order newest --json
    """
    from streamcap.errors import BadInputError
    from streamcap.search import ORDERS, open_index, parse_since
    from streamcap.search.index import KINDS

    if order not in ORDERS:
        raise BadInputError(f"unknown --order {order!r}; choose {' or '.join(ORDERS)}")
    kinds = tuple(k.strip() for k in kind.split(",") if k.strip()) if kind else None
    if kinds and any(k not in KINDS for k in kinds):
        raise BadInputError(f"unknown --kind {kind!r}; choose from {', '.join(KINDS)}")
    since_s = parse_since(since)
    from streamcap.search import to_fts_query

    to_fts_query(text)  # bad syntax is reported before any index is built
    progress = None

    def on_build(log: Path, size: int):
        nonlocal progress, update
        progress, update = _progress(size, "indexing")
        progress.start()

    update = None
    try:
        idx = open_index(source, on_build=on_build, on_progress=lambda off: update and update(off))
    finally:
        if progress is not None:
            progress.stop()
    with idx:
        results = idx.search(text, camera=camera, since_s=since_s, limit=limit, order=order, kinds=kinds)
    if as_json:
        for r in results:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    if not results:
        err_console.print("streamcap: no match", highlight=False, markup=False)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold")
    for col in ("time", "camera", "frame", "kind", "caption", "snapshot"):
        table.add_column(col, overflow="fold")
    for r in results:
        caption = r["caption"] or ""
        if r["raw"]:
            caption += f"  (raw: {r['raw']})"
        frame = "" if r["frame_index"] is None else str(r["frame_index"])
        table.add_row(*(Text(v) for v in (r["time"][:19].replace("T", " "), r["camera"] or "", frame, r["kind"],
                                          caption, r["snapshot"] or "")))
    Console(soft_wrap=False).print(table)


def register(app: typer.Typer) -> None:
    app.command()(index)
    app.command()(search)
