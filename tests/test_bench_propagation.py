"""``streamcap bench-propagation`` on a tiny synthetic ROOT (and one short real clip when present)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from streamcap.cli import propagation as cli_propagation
from conftest import SHARED
from test_carry import scene

DAVIS = SHARED / "davis"


def make_root(root: Path, lengths: dict[str, int]) -> Path:
    """SEQ/frames/NNNNN.jpg and SEQ/masks/NNNNN.png: one square moving 3 px right a frame."""
    for name, n in lengths.items():
        (root / name / "frames").mkdir(parents=True)
        (root / name / "masks").mkdir(parents=True)
        for t in range(n):
            img, (mask,) = scene([(20 + 3 * t, 40 + t)])
            cv2.imwrite(str(root / name / "frames" / f"{t:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / name / "masks" / f"{t:05d}.png"), mask.astype(np.uint8) * 255)
    return root


def invoke(*args: str):
    app = typer.Typer()
    cli_propagation.register(app)

    @app.command("other")  # a second command, so typer keeps the command name on the line
    def _other() -> None:
        pass

    return CliRunner().invoke(app, ["bench-propagation", *args])


def test_writes_carried_masks_and_prints_j_per_sequence(tmp_path):
    root = make_root(tmp_path / "root", {"alpha": 10, "beta": 7})
    pred = tmp_path / "pred"
    res = invoke(str(root), "--every", "4", "--out", str(pred), "--method", "carry", "--method", "warp:fast@0.5",
                 "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["every"] == 4 and report["methods"] == ["carry", "warp:fast@0.5"]
    rows = {r["sequence"]: r for r in report["sequences"]}
    assert set(rows) == {"alpha", "beta"}
    # Keyframes 0, 4, 8 (alpha) and 0, 4 (beta); every other frame is carried and written.
    assert sorted(p.name for p in (pred / "alpha").iterdir()) == [f"{i:05d}.png" for i in (1, 2, 3, 5, 6, 7, 9)]
    assert sorted(p.name for p in (pred / "beta").iterdir()) == [f"{i:05d}.png" for i in (1, 2, 3, 5, 6)]
    for name, row in rows.items():
        assert row["carried"] == len(list((pred / name).iterdir()))
        assert row["J"]["carry"] > 0.9 > row["hold"]
        assert set(row["ms"]) == {"carry", "warp:fast@0.5"}
    for p in (pred / "alpha").iterdir():
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.shape == (176, 240) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    # The written mask is the carried one: close to the truth of its frame.
    truth = cv2.imread(str(root / "alpha" / "masks" / "00007.png"), 0) > 127
    written = cv2.imread(str(pred / "alpha" / "00007.png"), 0) > 127
    assert np.count_nonzero(truth & written) / np.count_nonzero(truth | written) > 0.9
    assert report["mean"]["J"]["carry"] == pytest.approx(np.mean([r["J"]["carry"] for r in rows.values()]), abs=1e-4)


def test_table_names_every_sequence_and_method(tmp_path):
    root = make_root(tmp_path / "root", {"alpha": 6})
    res = invoke(str(root), "--every", "3", "--out", str(tmp_path / "pred"), "--method", "hold", "--seq", "alpha")
    assert res.exit_code == 0, res.output
    assert "alpha" in res.stdout and "J hold" in res.stdout and "mean" in res.stdout


@pytest.mark.parametrize("problem, args, message", [
    ("no root", ["--every", "4"], "not a folder"),
    ("unknown method", ["--every", "4", "--method", "magic"], "unknown method"),
    ("every 1", ["--every", "1"], "--every must be at least 2"),
    ("unknown seq", ["--every", "4", "--seq", "gamma"], "no sequence 'gamma'"),
    ("missing mask", ["--every", "4"], "no readable mask"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, problem, args, message):
    root = tmp_path / "root"
    if problem != "no root":
        make_root(root, {"alpha": 5})
    if problem == "missing mask":
        (root / "alpha" / "masks" / "00003.png").unlink()
    res = invoke(str(root), "--out", str(tmp_path / "pred"), *args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("streamcap: error:") and message in lines[0]


def test_main_cli_registers_the_command():
    from streamcap import cli

    names = {c.name for c in cli.app.registered_commands}
    assert "bench-propagation" in names


@pytest.mark.skipif(not (DAVIS / "blackswan").is_dir(), reason="../shared/davis not present")
def test_real_clip_carry_beats_hold(tmp_path):
    res = invoke(str(DAVIS), "--every", "12", "--out", str(tmp_path / "pred"), "--seq", "blackswan", "--json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["sequences"][0]
    assert row["carried"] == 45 and len(list((tmp_path / "pred" / "blackswan").iterdir())) == 45
    assert row["J"]["carry"] > row["hold"] + 0.1  # 0.96 vs 0.75 here
