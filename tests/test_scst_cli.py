"""``python -m training.train --scst`` end to end on 16 Flickr8k photos: starts from a
cross-entropy checkpoint (unfolded onto the projection, or on the full features), logs and
checkpoints like cross-entropy training, resumes, and refuses bad flag combinations."""

from __future__ import annotations

import json

import pytest
import torch

from test_training_smoke import DATA, common

pytestmark = pytest.mark.skipif(not (DATA / "train.txt").is_file(), reason="Flickr8k sample data not found")

SCST = ["--scst", "--scst-images", "8", "--scst-samples", "3", "--scst-lr", "1e-3", "--scst-epochs", "2"]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    from training.train import main

    root = tmp_path_factory.mktemp("f8k_scst")
    names = [n.strip() for n in (DATA / "train.txt").read_text().splitlines() if n.strip()][:20]
    (root / "train.txt").write_text("\n".join(names[:16]) + "\n")
    (root / "dev.txt").write_text("\n".join(names[16:]) + "\n")
    assert main(common(root, root / "ce") + ["--max-steps", "10"]) == 0
    return root


def test_scst_run_logs_checkpoints_and_resumes(ce_run, capsys):
    from streamcap.caption.checkpoint import load_checkpoint
    from training.train import main

    root = ce_run
    out = root / "scst"
    args = common(root, out) + SCST + ["--init", str(root / "ce" / "best.pt")]
    assert main(args + ["--max-steps", "1"]) == 0
    text = capsys.readouterr().out
    assert "unfolded onto 32 principal directions" in text
    saved = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["objective"] == "scst" and saved["step"] == 1
    assert main(common(root, out) + SCST + ["--resume", str(out)]) == 0  # to the end: 2 epochs
    assert "at step 1" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["objective"] == "scst" and result["start_step"] == 1 and result["step"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 4]  # init, the interrupted step, 2 epochs
    assert all(r["train_reward"] is not None and r["train_greedy_reward"] is not None for r in rows[1:])
    ck = load_checkpoint(out / "best.pt")  # folded back: takes the full encoder output
    assert ck.decoder.cfg.feature_dim == 1280 and ck.train_info["objective"] == "scst"
    assert ck.vocab.to_dict() == load_checkpoint(root / "ce" / "best.pt").vocab.to_dict()


def test_scst_on_full_features_from_a_full_width_checkpoint(ce_run):
    from training.train import main

    root = ce_run
    out = root / "scst_full"
    args = common(root, out) + SCST + ["--project-dim", "0", "--init", str(root / "ce" / "best.pt"),
                                       "--max-steps", "1"]
    assert main(args) == 0
    saved = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["model_args"]["feature_dim"] == 1280 and saved["projection"] is None


@pytest.mark.parametrize("extra, message", [
    ([], "--scst needs --init CKPT (a trained caption checkpoint) or --resume RUN"),
    (["--init", "X", "--fine-tune-blocks", "1"],
     "--scst runs on cached features: it cannot be combined with --fine-tune-blocks"),
    (["--init", "X", "--scst-baseline", "mean", "--scst-samples", "1"],
     "--scst-baseline mean needs --scst-samples 2 or more"),
    (["--init", "X", "--scst-epochs", "0"], "--scst-epochs must be at least 1 (got 0)"),
    (["--init", "X", "--scst-lr", "0"], "--scst-lr must be positive (got 0.0)"),
    (["--init", "X", "--scst-temperature", "0"], "--scst-temperature must be positive (got 0.0)"),
])
def test_bad_flags_are_refused(ce_run, capsys, extra, message):
    from training.train import main

    root = ce_run
    capsys.readouterr()
    assert main(common(root, root / "bad") + ["--scst", *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_resume_across_objectives_and_missing_init_are_refused(ce_run, capsys):
    from training.train import main

    root = ce_run
    capsys.readouterr()
    assert main(common(root, root / "ce") + ["--scst", "--resume", str(root / "ce")]) == 2
    assert "is a cross-entropy run; drop --scst" in capsys.readouterr().err
    assert main(common(root, root / "bad") + ["--init", str(root / "ce" / "best.pt")]) == 2
    assert "--init is for --scst" in capsys.readouterr().err
    assert main(common(root, root / "bad") + ["--scst", "--init", str(root / "nothing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
