"""Weights resolution: explicit file, hub cache, download, and the one-line offline failure."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import MEDIA
from typer.testing import CliRunner

from streamcap import weights as W
from streamcap.cli import app
from streamcap.errors import BadInputError

DOG = str(MEDIA / "dog.jpg")
V1 = W.SEGMENTER_WEIGHTS["v1"]
V1_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: downloads raise URLError."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(W, "_urlopen", no_network)
    return home / "hub" / "checkpoints"


def test_names_and_paths_follow_torchvision(offline):
    assert W.weights_filename(V1) == V1_FILE
    assert W.cache_path(V1) == offline / V1_FILE
    assert W.expected_hash_prefix(V1_FILE) == "bf2d0c1e"


def test_offline_without_file_is_one_clear_error(offline):
    with pytest.raises(BadInputError) as info:
        W.resolve_segmenter_weights("v1")
    msg = str(info.value)
    assert V1_FILE in msg and V1.url in msg and str(offline) in msg
    assert "\n" not in msg and "--seg-weights random" in msg


def test_offline_cli_exits_2_with_the_message(offline):
    result = CliRunner().invoke(app, ["segment", DOG, "--seg-size", "128"])
    assert result.exit_code == 2, result.output
    assert V1_FILE in result.output and V1.url in result.output and str(offline) in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_cache_is_used_before_download(offline):
    offline.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, offline / V1_FILE)
    resolved = W.resolve_segmenter_weights("v1")  # the download would raise
    assert resolved.source == "cache" and resolved.path == offline / V1_FILE
    assert torch.equal(resolved.state_dict["w"], torch.ones(2))


def test_explicit_file_wins_and_bad_files_are_bad_input(tmp_path, offline):
    good = tmp_path / "mine.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, good)  # a wrapped state dict is unwrapped
    resolved = W.resolve_segmenter_weights("v1", good)
    assert resolved.source == "file" and list(resolved.state_dict) == ["w"]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="Cannot read segmentation weights"):
        W.resolve_segmenter_weights("v1", garbage)
    with pytest.raises(BadInputError, match="not found"):
        W.resolve_segmenter_weights("v1", tmp_path / "missing.pth")
    assert W.resolve_segmenter_weights("v2", "random").source == "random"
    with pytest.raises(BadInputError, match="choose one of"):
        W.resolve_segmenter_weights("v9")


def test_mismatched_state_dict_is_bad_input(tmp_path, offline):
    from streamcap.segment import build_segmenter

    path = tmp_path / "other.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(BadInputError, match="do not fit"):
        build_segmenter(weights=str(path), device="cpu")
    result = CliRunner().invoke(app, ["segment", DOG, "--seg-weights", str(path), "--seg-size", "128"])
    assert result.exit_code == 2 and "do not fit" in result.output


def test_verify_checks_the_hash_prefix(tmp_path):
    data = b"weights"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    good = tmp_path / f"model-{prefix}.pth"
    good.write_bytes(data)
    assert W.verify_file(good)[0]
    bad = tmp_path / "model-deadbeef.pth"
    bad.write_bytes(data)
    ok, msg = W.verify_file(bad)
    assert not ok and "mismatch" in msg


def test_models_cli_list_and_verify(offline):
    runner = CliRunner()
    wide = {"COLUMNS": "400"}
    result = runner.invoke(app, ["models"], env=wide)  # list is the default
    assert result.exit_code == 0, result.output
    assert "v1" in result.output and "v2" in result.output and str(offline) in result.output
    assert V1_FILE in result.output and " no " in result.output
    offline.mkdir(parents=True)
    (offline / V1_FILE).write_bytes(b"x" * 2_000_000)  # present but corrupt
    result = runner.invoke(app, ["models", "list"], env=wide)
    assert "yes" in result.output and "2.0 MB" in result.output
    result = runner.invoke(app, ["models", "verify"])
    assert result.exit_code == 2 and "hash mismatch" in result.output


def test_models_fetch_offline_and_hash_mismatch(offline, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["models", "fetch", "v1"])
    assert result.exit_code == 2 and V1.url in result.output and str(offline) in result.output

    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": "5"}

    monkeypatch.setattr(W, "_urlopen", lambda url, timeout=30.0: FakeResponse(b"bytes"))
    result = runner.invoke(app, ["models", "fetch", "v1"])
    assert result.exit_code == 2 and "does not start with bf2d0c1e" in result.output
    assert list(offline.iterdir()) == []  # nothing half-written is left behind


def test_fetch_saves_a_verified_file(offline, monkeypatch):
    data = b"pretend weights"
    monkeypatch.setattr(W, "expected_hash_prefix", lambda path: hashlib.sha256(data).hexdigest()[:8])

    class FakeResponse(io.BytesIO):
        headers: dict = {}

    monkeypatch.setattr(W, "_urlopen", lambda url, timeout=30.0: FakeResponse(data))
    seen = []
    path = W.fetch_model("v2", on_progress=lambda done, total: seen.append(done))
    assert path == offline / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert Path(path).read_bytes() == data and seen[-1] == len(data)
