"""CLI commands of the segmentation stage: ``streamcap segment`` and ``streamcap models``.

``streamcap.cli.app`` imports this module and calls ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from streamcap.cli.common import check_device, expand_images, fail as _fail
from streamcap.errors import BadInputError, StreamcapError


SEGMENT_HELP = """Segment the objects in still images and print what was found.

Prints a table per image (or, with --json, one JSON object per image per line:
{"path", "size": \\[w, h], "objects": \\[{"label", "score", "box": \\[x1, y1, x2, y2]}]}),
and with --out writes each image with masks, boxes and labels drawn.

IMAGES may be files, folders (their images, sorted) or quoted globs.

\b
Examples:
  streamcap segment photo.jpg
  streamcap segment photos/ --out annotated/ --classes person,dog
  streamcap segment "shots/*.png" --json > detections.jsonl
  streamcap segment photo.jpg --seg-model v2 --seg-size 800 --device cuda
  streamcap segment photo.jpg --seg-weights random --seg-size 256   (no weights needed)
"""

MODELS_HELP = """List, download and verify model weights (to prepare an offline machine).

\b
Examples:
  streamcap models              list models, whether each is cached, where, and its size
  streamcap models fetch        download the v1 and v2 segmenter weights into the cache
  streamcap models fetch v2     download one
  streamcap models verify       check cached files against the SHA-256 prefix in their names
"""


def _out_names(paths: list[Path]) -> list[str]:
    """Output file names: the input's name, prefixed with its position when names repeat."""
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{i:04d}_{n}" if n in dup else n for i, n in enumerate(names)]


def segment_command(
    images: list[str] = typer.Argument(..., help="Image files, folders or globs.", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", help="Write annotated images into this folder (created)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image per line instead of tables."),
    seg_model: str = typer.Option("v1", "--seg-model", help="v1 (maskrcnn_resnet50_fpn) or v2 (..._fpn_v2)."),
    seg_weights: Optional[str] = typer.Option(
        None, "--seg-weights", help="A state-dict file, or 'random' for an untrained model. Default: cache/download."
    ),
    seg_size: Optional[int] = typer.Option(
        None, "--seg-size", help="Short side the model sees (default 512 on CPU, 800 on GPU; 0 = image size)."
    ),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="Keep detections scoring at least this."),
    mask_threshold: float = typer.Option(0.5, "--mask-threshold", help="Mask probability above which a pixel is set."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Keep only these COCO classes, e.g. person,car."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16."),
    max_detections: int = typer.Option(100, "--max-detections", help="At most this many detections per image."),
) -> None:
    from streamcap.segment import SegmenterConfig, build_segmenter

    try:
        cfg = SegmenterConfig(
            model=seg_model,
            weights=seg_weights,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            classes=tuple(classes.split(",")) if classes else None,
            seg_size=seg_size,
            device=check_device(device),
            precision=precision,
            max_detections=max_detections,
            masks=out is not None,  # masks are only needed for drawing
        )
        paths = expand_images(images)
        import cv2

        for p in paths:  # fail before loading the model when an input is no image at all
            if not cv2.haveImageReader(str(p)):
                raise BadInputError(f"Cannot read image (not an image, or unsupported format): {p}")
        if out is not None:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise BadInputError(f"Cannot create output folder {out}: {err}") from None
        segmenter = build_segmenter(cfg)
        _run_segment(segmenter, paths, out, as_json)
    except StreamcapError as err:
        raise _fail(err) from None


def _run_segment(segmenter, paths: list[Path], out: Path | None, as_json: bool) -> None:
    import cv2
    from rich.console import Console
    from rich.table import Table

    from streamcap.render import Renderer
    from streamcap.rle import detections_summary

    console = Console()
    renderer = Renderer(banner=False, hud=False)
    for path, out_name in zip(paths, _out_names(paths)):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise BadInputError(f"Cannot read image (corrupt or unsupported): {path}")
        det = segmenter.segment_images([image])[0]
        h, w = image.shape[:2]
        summary = detections_summary(det)
        if as_json:
            record = {"path": str(path), "size": [w, h], "objects": summary["objects"]}
            typer.echo(json.dumps(record))
        else:
            table = Table(title=f"{path} ({w}x{h}): {len(det)} object(s)", title_justify="left")
            table.add_column("#", justify="right")
            table.add_column("label")
            table.add_column("score", justify="right")
            table.add_column("box [x1, y1, x2, y2]")
            for i, obj in enumerate(summary["objects"]):
                table.add_row(str(i), obj["label"], f"{obj['score']:.3f}", str(obj["box"]))
            console.print(table)
        if out is not None:
            from streamcap.types import Frame, FrameResult

            frame = Frame(source=str(path), index=0, pts_s=0.0, wall_ts=0.0, image=image)
            drawn = renderer.annotate(image, FrameResult(frame=frame, detections=det))
            target = out / out_name
            try:
                ok = cv2.imwrite(str(target), drawn)
            except cv2.error:
                ok = False
            if not ok:
                raise BadInputError(f"Cannot write {target}")


# -- models ----------------------------------------------------------------------------------

models_app = typer.Typer(help=MODELS_HELP, invoke_without_command=True, no_args_is_help=False)


def _size_text(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


@models_app.callback()
def _models_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        models_list()


@models_app.command("list")
def models_list() -> None:
    """List the models, whether each is on this machine, where, and how big."""
    from rich.console import Console
    from rich.table import Table

    from streamcap.weights import hub_checkpoint_dir, list_models

    table = Table(title=f"Models (segmenter cache: {hub_checkpoint_dir()})", title_justify="left")
    for col in ("name", "cached", "size", "path", "description"):
        table.add_column(col, overflow="fold")
    for m in list_models():
        table.add_row(m.name, "yes" if m.cached else "no", _size_text(m.size_bytes), str(m.path), m.description)
    Console().print(table)


@models_app.command("fetch")
def models_fetch(
    name: Optional[str] = typer.Argument(None, help="v1 or v2 (default: both segmenters)."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
) -> None:
    """Download segmenter weights into the torch hub cache (for use offline later)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from streamcap.weights import SEGMENTER_WEIGHTS, cache_path, fetch_model, get_weights_entry

    names = [name] if name else list(SEGMENTER_WEIGHTS)
    try:
        for n in names:
            entry = get_weights_entry(n)
            if cache_path(entry).is_file() and not force:
                typer.echo(f"{n}: already cached at {cache_path(entry)}")
                continue
            with Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
            ) as progress:
                task = progress.add_task(f"{n}", total=None)

                def update(done: int, total: int | None, task=task, progress=progress) -> None:
                    progress.update(task, completed=done, total=total)

                path = fetch_model(n, on_progress=update, force=force)
            typer.echo(f"{n}: saved {path}")
    except StreamcapError as err:
        raise _fail(err) from None


@models_app.command("verify")
def models_verify(name: Optional[str] = typer.Argument(None, help="v1 or v2 (default: every cached file).")) -> None:
    """Check cached weights against the SHA-256 prefix in their file names (as torch.hub does)."""
    from streamcap.weights import list_models, verify_file

    try:
        infos = list_models()
        bad = 0
        if name:
            if name not in ("v1", "v2", "caption"):
                raise BadInputError(f"Unknown model {name!r}; choose one of: v1, v2, caption")
            infos = [m for m in infos if m.name == name]
            if not infos:  # the caption model is listed only when bundled
                from streamcap.weights import CAPTION_ASSET

                typer.echo(f"caption: not present ({CAPTION_ASSET})")
                bad += 1
        for m in infos:
            if not m.cached:
                typer.echo(f"{m.name}: not cached ({m.path})")
                if name:
                    bad += 1
                continue
            ok, message = verify_file(m.path)
            typer.echo(f"{m.name}: {message}")
            bad += not ok
        if bad:
            raise BadInputError(f"{bad} model file(s) missing or failed verification")
    except StreamcapError as err:
        raise _fail(err) from None


def register(app: typer.Typer) -> None:
    """Add ``segment`` and ``models`` to the main app."""
    app.command("segment", help=SEGMENT_HELP, no_args_is_help=True)(segment_command)
    app.add_typer(models_app, name="models", help=MODELS_HELP)


__all__: list[str] = ["register", "segment_command", "models_app", "expand_images"]
