"""--fine-tune-blocks: a few joint encoder+decoder steps on 12 Flickr8k photos. The loss falls,
only the unfrozen encoder block changes, the checkpoint captions through ``streamcap caption``
with the fine-tuned encoder, resuming continues from the saved step."""

from __future__ import annotations

import json

import pytest
import torch

from test_training_smoke import DATA, common

pytestmark = pytest.mark.skipif(not (DATA / "train.txt").is_file(), reason="Flickr8k sample data not found")

FT = ["--project-dim", "0", "--fine-tune-blocks", "1", "--encoder-lr", "1e-3", "--batch-size", "16"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("f8k_ft")
    names = [n.strip() for n in (DATA / "train.txt").read_text().splitlines() if n.strip()][:12]
    (root / "train.txt").write_text("\n".join(names[:9]) + "\n")
    (root / "dev.txt").write_text("\n".join(names[9:]) + "\n")
    return root, names


@pytest.fixture(scope="module")
def trained(small):
    from training.train import build_parser, train

    root, _ = small
    result = train(build_parser().parse_args(common(root, root / "run") + FT + ["--max-steps", "12"]))
    return root, result


def test_loss_falls_and_only_the_last_block_changes(trained):
    from streamcap.caption.encoder import build_encoder

    root, result = trained
    assert result["step"] == 12
    assert result["loss_end"] < result["loss_start"] - 0.5
    assert not any((root / "cache").glob("*.f16"))  # no feature cache in this mode
    pretrained = build_encoder("efficientnet_lite0").state_dict()
    for name in ("best.pt", "last.pt"):
        ck = torch.load(root / "run" / name, map_location="cpu", weights_only=True)
        enc = ck["encoder_state"]
        assert set(enc) == set(pretrained)
        assert not torch.equal(enc["body._conv_head.weight"], pretrained["body._conv_head.weight"])
        assert torch.equal(enc["body._conv_stem.weight"], pretrained["body._conv_stem.weight"])
        assert torch.equal(enc["body._blocks.15._project_conv.weight"],
                           pretrained["body._blocks.15._project_conv.weight"])
        # BatchNorm statistics stay frozen
        assert torch.equal(enc["body._bn1.running_mean"], pretrained["body._bn1.running_mean"])


def test_checkpoint_uses_fine_tuned_encoder_and_captions_via_cli(trained, small):
    from typer.testing import CliRunner

    from streamcap.caption.checkpoint import load_checkpoint
    from streamcap.cli import app

    root, _ = trained
    ck = load_checkpoint(root / "run" / "best.pt")
    assert ck.encoder_state is not None and ck.train_info["fine_tune_blocks"] == 1
    enc = ck.build_encoder()
    assert torch.equal(enc.state_dict()["body._conv_head.weight"],
                       ck.encoder_state["body._conv_head.weight"])
    res = CliRunner().invoke(app, ["caption", str(DATA / "images" / small[1][10]), "--model",
                                   str(root / "run" / "best.pt"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["caption"]


def test_resume_continues_with_encoder_state(trained, capsys):
    from training.train import main

    root, _ = trained
    saved = torch.load(root / "run" / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["step"] == 12 and saved["fine_tune_blocks"] == 1
    assert len(saved["optimizer"]["param_groups"]) == 3 and saved["encoder_state"] is not None
    capsys.readouterr()
    assert main(common(root, root / "run") + FT + ["--max-steps", "14", "--resume", str(root / "run")]) == 0
    assert "at step 12" in capsys.readouterr().out
    result = json.loads((root / "run" / "result.json").read_text())
    assert result["start_step"] == 12 and result["step"] == 14
    after = torch.load(root / "run" / "resume.pt", map_location="cpu", weights_only=True)
    assert not torch.equal(after["encoder_state"]["body._conv_head.weight"],
                           saved["encoder_state"]["body._conv_head.weight"])
    # resuming without the flag is refused rather than silently dropping the encoder
    assert main(common(root, root / "run") + ["--project-dim", "0", "--resume", str(root / "run")]) == 2


def test_project_dim_is_refused(small, capsys):
    from training.train import main

    root, _ = small
    assert main(common(root, root / "bad") + ["--fine-tune-blocks", "2"]) == 2  # TINY has --project-dim 32
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --fine-tune-blocks cannot be combined with --project-dim"]


def test_scst_from_a_fine_tuned_checkpoint_keeps_its_encoder(trained, capsys):
    """SCST trains the decoder on features of the init's fine-tuned (now frozen) encoder, and
    every checkpoint it writes, the fp16 export included, carries that encoder."""
    from streamcap.caption.checkpoint import load_checkpoint
    from training.features import weights_tag
    from training.train import main

    root, _ = trained
    init = load_checkpoint(root / "run" / "best.pt")
    out, export = root / "scst", root / "scst_small.pt"
    assert main(common(root, out) + ["--project-dim", "0", "--scst", "--init", str(root / "run" / "best.pt"),
                                     "--scst-images", "3", "--scst-samples", "2", "--scst-epochs", "1",
                                     "--export", str(export)]) == 0, capsys.readouterr().err
    # the features were cached with the fine-tuned weights (the cache key holds their hash)
    assert any(weights_tag(init.encoder_state) in p.name for p in (root / "cache").glob("*.f16"))
    for path in (out / "best.pt", export):
        ck = load_checkpoint(path)
        assert ck.train_info["objective"] == "scst" and ck.encoder_state is not None
        for k in ("body._conv_head.weight", "body._blocks.15._project_conv.weight"):
            assert torch.allclose(ck.encoder_state[k].float(), init.encoder_state[k].float(), atol=1e-2)
    saved = torch.load(export, map_location="cpu", weights_only=True)
    assert saved["encoder_state"]["body._conv_head.weight"].dtype == torch.float16
    resume = torch.load(out / "resume.pt", map_location="cpu", weights_only=True)
    assert torch.equal(resume["encoder_state"]["body._conv_head.weight"],
                       init.encoder_state["body._conv_head.weight"])
