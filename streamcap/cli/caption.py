"""CLI commands for scene captions: ``streamcap caption`` and ``streamcap bench-captions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from streamcap.cli.common import check_device, expand_images, fail as _fail
from streamcap.errors import BadInputError, StreamcapError

def common_folder(paths: list[Path]) -> tuple[str, list[str]]:
    """(the folder all ``paths`` share, each path relative to it): distinct paths stay distinct
    however long they are. ("", the paths as given) when they share none."""
    import os

    try:
        common = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    except ValueError:  # absolute and relative mixed
        common = ""
    if common in ("", "."):
        return "", [str(p) for p in paths]
    return common, [os.path.relpath(p, common) for p in paths]


def attention_map_names(out: Path, paths: list[Path]) -> list[Path]:
    """Where each image's attention map goes: ``out`` itself for one image, else
    ``OUT_<image stem>.png`` (``_<n>`` added where two images share a stem)."""
    if len(paths) == 1:
        return [out]
    stems = [p.stem for p in paths]
    names = []
    for i, stem in enumerate(stems):
        tag = stem if stems.count(stem) == 1 else f"{stem}_{i + 1}"
        names.append(out.with_name(f"{out.stem}_{tag}{out.suffix}"))
    return names


def objects_for(paths: list[Path], objects_file: Path) -> list[list[str]]:
    """Each image's object labels from a ``streamcap segment --json`` file: matched by the path
    as written (the same image arguments give the same strings), else by the resolved path."""
    from streamcap.caption.guidance import object_labels, read_objects_file

    records = read_objects_file(objects_file)
    resolved = {str(Path(key).resolve()): objects for key, objects in records.items()}
    out = []
    for path in paths:
        objects = records.get(str(path))
        if objects is None:
            objects = resolved.get(str(Path(path).resolve()))
        if objects is None:
            raise BadInputError(f"{objects_file} has no objects for image {path} (run streamcap segment "
                                "--json on the same images)")
        out.append(object_labels(objects))
    return out


def caption_command(
    images: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    beam: int = typer.Option(3, "--beam", min=1, max=20, help="Beam width (1 = greedy)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Caption checkpoint (.pt); default: the bundled one."),
    attention_map: Optional[Path] = typer.Option(
        None, "--attention-map",
        help="Write per-word attention heatmaps to this PNG; with several images, one file each: "
             "OUT_<image name>.png next to it. The files written are listed on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: image, caption, score."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    max_len: int = typer.Option(20, "--max-len", min=1, help="Longest caption in words."),
    objects_from: Optional[Path] = typer.Option(
        None, "--objects-from",
        help="Objects per image as `streamcap segment --json` prints them (JSONL, matched by path): "
             "the caption is guided toward the detected classes (score >= 0.5) and away from "
             "object words no detection supports."),
) -> None:
    """Caption images with the CNN-LSTM caption model.

    Examples:

      streamcap caption samples/dog.jpg

      streamcap caption photos/ "more/*.png" --beam 5 --json > captions.jsonl

      streamcap caption dog.jpg --model my_caption.pt --attention-map dog_attention.png

      streamcap segment photos/ --json > objects.jsonl; streamcap caption photos/ --objects-from objects.jsonl
    """
    from streamcap.caption.api import Captioner, read_image_rgb
    from streamcap.caption.attention_map import save_attention_map

    try:
        paths = expand_images(images)
        labels = objects_for(paths, objects_from) if objects_from is not None else None
        check_device(device)
        captioner = Captioner(model=model, device=device, beam=beam, max_len=max_len)
        want_maps = attention_map is not None
        map_paths = attention_map_names(attention_map, paths) if want_maps else []
        rows = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            arrays = [read_image_rgb(p) for p in chunk]
            chunk_labels = None if labels is None else labels[start:start + batch_size]
            results = captioner.caption_images(arrays, batch_size=batch_size, return_alphas=want_maps,
                                               objects=chunk_labels)
            for i, (path, array, res) in enumerate(zip(chunk, arrays, results), start):
                if as_json:
                    row = {"image": str(path), "caption": res.text, "score": round(res.score, 4)}
                    if labels is not None:
                        row["objects"] = labels[i]
                    typer.echo(json.dumps(row))
                rows.append((path, res.text, res.score))
                if want_maps:
                    save_attention_map(map_paths[i], array, res.tokens, res.alphas)
                    typer.echo(f"streamcap: attention map of {path}: {map_paths[i]}", err=True)
    except StreamcapError as err:
        raise _fail(err)
    if not as_json:
        from rich.console import Console
        from rich.table import Table

        folder, names = common_folder([path for path, _, _ in rows])
        table = Table(title=f"images in {folder}" if folder else None)
        table.add_column("image", overflow="fold")  # folded, never cut: rows stay distinguishable
        table.add_column("caption")
        table.add_column("score", justify="right")
        for name, (_, text, score) in zip(names, rows):
            table.add_row(name, text, f"{score:.3f}")
        Console().print(table)


def bench_captions_command(
    video: Optional[Path] = typer.Option(None, "--video", help="Video for the flicker test; default samples/ clip."),
    still: Optional[Path] = typer.Option(None, "--still", help="Photo cut to in the responsiveness test."),
    model: Optional[Path] = typer.Option(None, "--model", help="Caption checkpoint (.pt)."),
    interval: float = typer.Option(2.0, "--interval", min=0.0, help="Seconds of stream time between captions."),
    confirm_runs: int = typer.Option(2, "--confirm-runs", min=1, help="Smoother: runs to confirm a change."),
    confident_margin: Optional[float] = typer.Option(0.5, "--confident-margin",
                                                     help="Smoother: hard change at once when this much "
                                                          "more sure than of the shown scene."),
    confident_score: Optional[float] = typer.Option(None, "--confident-score",
                                                    help="Smoother: absolute score for an immediate hard change."),
    feature_ema: Optional[float] = typer.Option(None, "--feature-ema", help="Average encoder features (alpha)."),
    window: int = typer.Option(3, "--window", min=1,
                               help="Frames pooled per caption (sampled since the previous one; 1 = the due frame)."),
    compare: str = typer.Option("meaning", "--compare",
                                help="Smoother: compare captions by 'meaning' (the model's word embeddings) "
                                     "or by 'words' (shared content words)."),
    still_runs: int = typer.Option(8, "--still-runs", min=0,
                                   help="Smoother: runs that must agree to change the caption while the "
                                        "picture stays the same (0: off, --confirm-runs applies)."),
    beam: int = typer.Option(3, "--beam", min=1),
    cut_at: float = typer.Option(20.0, "--cut-at", help="Seconds of video before the hard cut."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Measure caption flicker (changes/minute, raw vs shown) and responsiveness to a hard cut.

    Example: streamcap bench-captions --video ../shared/media/vtest.avi --interval 2 --json
    """
    from streamcap.caption.api import Captioner
    from streamcap.caption.flicker import bench, default_media
    from streamcap.caption.smoothing import CaptionSmoother

    try:
        video = video or default_media("vtest.avi") or default_media("vtest_8s.mp4")
        still = still or default_media("horses.jpg")
        if video is None or still is None:
            raise BadInputError("no default media found; pass --video FILE and --still FILE")
        if not Path(video).is_file():
            raise BadInputError(f"video {video} does not exist")
        if compare not in ("meaning", "words"):
            raise BadInputError(f"--compare must be meaning or words, not {compare!r}")
        captioner = Captioner(model=model, beam=beam, feature_ema=feature_ema, window=window)
        similarity = captioner.word_vectors() if compare == "meaning" else None
        report = bench(captioner, video, still, interval,
                       lambda: CaptionSmoother(confirm_runs=confirm_runs, confident_margin=confident_margin,
                                              confident_score=confident_score, similarity=similarity,
                                              still_runs=still_runs or None),
                       cut_at_s=cut_at)
    except StreamcapError as err:
        raise _fail(err)
    report["settings"] = {"model": str(captioner.checkpoint_path), "beam": beam, "interval_s": interval,
                          "confirm_runs": confirm_runs, "confident_margin": confident_margin,
                          "confident_score": confident_score,
                          "feature_ema": feature_ema, "window": window, "compare": compare,
                          "still_runs": still_runs}
    if as_json:
        typer.echo(json.dumps(report))
        return
    f, r = report["flicker"], report["responsiveness"]
    typer.echo(f"flicker on {f['video']} ({f['duration_s']} s, {f['runs']} captions every {interval} s): "
               f"raw {f['raw_changes_per_min']}/min, shown {f['shown_changes_per_min']}/min; "
               f"{f['caption_ms']} ms per caption (frames pooled: {window})")
    typer.echo(f"hard cut at {r['cut_at_s']} s to {r['still']}: raw caption changed after "
               f"{r['raw_latency_s']} s, shown after {r['shown_latency_s']} s "
               f"({r['shown_before_cut']!r} -> {r['shown_after_cut']!r})")


def register(app: typer.Typer) -> None:
    app.command("caption")(caption_command)
    app.command("bench-captions")(bench_captions_command)
