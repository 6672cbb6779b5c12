"""A few training steps on 20 Flickr8k photos: the loss falls, the checkpoint captions
through ``streamcap caption``, resuming continues from the saved step, evaluation reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED

DATA = SHARED / "data" / "flickr8k"

pytestmark = pytest.mark.skipif(not (DATA / "train.txt").is_file(), reason="Flickr8k sample data not found")

TINY = ["--embed-dim", "32", "--hidden-dim", "64", "--attention-dim", "32", "--project-dim", "32",
        "--min-count", "1", "--batch-size", "16", "--lr", "5e-3", "--warmup-steps", "0",
        "--schedule", "constant", "--dropout", "0", "--epochs", "100", "--threads", "2",
        "--no-progress", "--seed", "1", "--patience", "1000"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("f8k")
    names = [n.strip() for n in (DATA / "train.txt").read_text().splitlines() if n.strip()][:20]
    (root / "train.txt").write_text("\n".join(names[:16]) + "\n")
    (root / "dev.txt").write_text("\n".join(names[16:]) + "\n")
    return root, names


def common(root: Path, out: Path) -> list[str]:
    return ["--dataset", "flickr8k", "--images", str(DATA / "images"), "--captions",
            str(DATA / "captions.txt"), "--split-file", str(root / "train.txt"),
            "--val-split-file", str(root / "dev.txt"), "--cache-dir", str(root / "cache"),
            "--out", str(out), *TINY]


@pytest.fixture(scope="module")
def trained(small_set):
    from training.train import build_parser, train

    root, _ = small_set
    old = torch.get_num_threads()
    result = train(build_parser().parse_args(common(root, root / "run") + ["--max-steps", "15"]))
    assert torch.get_num_threads() == old
    return root, result


def test_loss_falls_and_outputs_are_written(trained):
    root, result = trained
    assert result["step"] == 15
    assert result["loss_end"] < result["loss_start"] - 0.5
    run = root / "run"
    for name in ("best.pt", "last.pt", "resume.pt", "metrics.jsonl", "curves.png", "run.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and {"step", "epoch", "train_loss", "bleu4", "cider_d"} <= set(rows[0])


def test_checkpoint_takes_full_encoder_features_and_captions_via_cli(trained, small_set):
    from typer.testing import CliRunner

    from streamcap.caption.checkpoint import load_checkpoint
    from streamcap.cli import app

    root, _ = trained
    ck = load_checkpoint(root / "run" / "best.pt")
    assert ck.decoder.cfg.feature_dim == 1280 and ck.encoder_name == "efficientnet_lite0"
    image = DATA / "images" / small_set[1][17]
    res = CliRunner().invoke(app, ["caption", str(image), "--model", str(root / "run" / "best.pt"),
                                   "--beam", "2", "--json"])
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.strip().splitlines()[-1])
    assert isinstance(line["caption"], str) and line["caption"]


def test_resume_continues_from_saved_step(small_set, capsys):
    from training.train import main

    root, _ = small_set
    out = root / "resumed"
    assert main(common(root, out) + ["--max-steps", "6"]) == 0
    saved = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["step"] == 6
    capsys.readouterr()
    assert main(common(root, out) + ["--max-steps", "9", "--resume", str(out)]) == 0
    text = capsys.readouterr().out
    assert "at step 6" in text
    result = json.loads((out / "result.json").read_text())
    assert result["start_step"] == 6 and result["step"] == 9
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 9 and 6 in steps


def test_evaluate_reports_all_figures(trained, small_set, tmp_path):
    from training.evaluate import main

    root, _ = trained
    out = tmp_path / "eval.json"
    code = main(["--model", str(root / "run" / "best.pt"), "--images", str(DATA / "images"),
                 "--captions", str(DATA / "captions.txt"), "--split-file", str(root / "dev.txt"),
                 "--train-split-file", str(root / "train.txt"), "--cache-dir", str(root / "cache"),
                 "--beam", "3", "--json", str(out), "--samples", str(tmp_path / "s.html"),
                 "--constant-candidates", "20", "--nn-k", "2", "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    for method in ("greedy", "beam3"):
        assert {"bleu1", "bleu2", "bleu3", "bleu4", "cider_d"} <= set(res["methods"][method])
    assert res["baselines"]["nearest_neighbour"]["cider_d"] >= 0
    assert res["baselines"]["constant"]["by_cider_d"]["caption"]
    assert "METEOR" in res["note"] and res["images"] == 4
    assert "<img" in (tmp_path / "s.html").read_text()
