"""Captioner, `streamcap caption` and `bench-captions` end to end with a tiny checkpoint
trained here in a second to overfit two photos (real lite0 encoder, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import MEDIA, SAMPLE_CLIP, run_cli
from typer.testing import CliRunner

from streamcap.caption.api import Captioner
from streamcap.caption.checkpoint import save_checkpoint
from streamcap.caption.encoder import build_encoder, preprocess
from streamcap.caption.model import CaptionDecoder, CaptionModelConfig, caption_loss
from streamcap.caption.vocab import Vocab, tokenize
from streamcap.cli import app
from streamcap.stages import CaptionStage
from streamcap.types import Frame

TARGETS = {"dog.jpg": "a dog sits next to a bicycle", "horses.jpg": "horses graze in a green field"}
runner = CliRunner()


MAX_STEPS = 1000  # a cap, not a target: training stops as soon as the captions come back


def _decodes(dec: CaptionDecoder, feats: torch.Tensor, vocab: Vocab) -> list[list[str]]:
    """Greedy and beam 2/3 captions of every image (what the tests below ask of the model)."""
    from streamcap.caption.decode import beam_search, greedy

    dec.eval()
    out = [[" ".join(vocab.decode_tokens(ids)) for ids, _ in greedy(dec, feats)]]
    for k in (2, 3):
        out.append([" ".join(vocab.decode_tokens(h[0][0])) for h in beam_search(dec, feats, beam=k)])
    dec.train()
    return out


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory) -> Path:
    """Overfit two photos until greedy and beam decoding give back both target captions on two
    checks in a row (a behavioural stop, whatever CPU's arithmetic gets there), at most
    MAX_STEPS steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0")
    images = [cv2.imread(str(MEDIA / name))[:, :, ::-1] for name in TARGETS]
    with torch.inference_mode():
        feats = encoder(preprocess(images))  # (2, 1280, 7, 7)
    tokens = [tokenize(t) for t in TARGETS.values()]
    vocab = Vocab.build(tokens, min_count=1)
    ids = [vocab.encode(t) for t in tokens]
    T = max(map(len, ids))
    caps = torch.tensor([x + [vocab.pad_id] * (T - len(x)) for x in ids])
    cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=32, hidden_dim=64,
                             attention_dim=32, dropout=0.0)
    dec = CaptionDecoder(cfg)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    feats = feats.clone()
    want = [list(TARGETS.values())] * 3
    step, hits, got = 0, 0, None
    while step < MAX_STEPS and hits < 2:
        for _ in range(10):
            logits, alphas = dec(feats, caps)
            loss = caption_loss(logits, caps, alphas, alpha_c=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        got = _decodes(dec, feats, vocab)
        hits = hits + 1 if got == want else 0
    assert hits == 2, f"after {step} steps the decoded captions are {got}, not {want[0]}"
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", dec.eval(), vocab,
                           "efficientnet_lite0", train_info={"steps": step})


def test_captioner_reproduces_the_overfit_captions(trained_ckpt):
    for beam in (1, 3):
        cap = Captioner(trained_ckpt, device="cpu", beam=beam)
        results = cap.caption_images([str(MEDIA / n) for n in TARGETS], batch_size=2, return_alphas=True)
        assert [r.text for r in results] == list(TARGETS.values())
        for r in results:
            assert r.score <= 0 and r.alphas.shape == (len(r.tokens), 7, 7)
            assert np.allclose(r.alphas.sum(axis=(1, 2)), 1.0, atol=1e-4)


def test_captioner_is_a_caption_stage_on_bgr_frames(trained_ckpt):
    cap = Captioner(trained_ckpt, device="cpu", feature_ema=0.5)
    assert isinstance(cap, CaptionStage)
    dog, horses = (cv2.imread(str(MEDIA / n)) for n in TARGETS)
    text, score = cap(Frame("cam", 0, 0.0, 0.0, dog))
    assert text == TARGETS["dog.jpg"] and isinstance(score, float)
    assert cap(Frame("cam", 1, 2.0, 0.0, dog))[0] == TARGETS["dog.jpg"]
    assert cap(Frame("cam", 2, 4.0, 0.0, horses))[0] == TARGETS["horses.jpg"]  # hard change resets
    assert cap.ema_resets == 1


def test_caption_cli_json_and_table(trained_ckpt, tmp_path):
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), str(MEDIA / "horses.jpg"),
                              "--model", str(trained_ckpt), "--json", "--beam", "2", "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [set(r) for r in rows] == [{"image", "caption", "score"}] * 2
    assert [r["caption"] for r in rows] == list(TARGETS.values())
    assert all(isinstance(r["score"], float) for r in rows)
    out = tmp_path / "att.png"
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), "--model", str(trained_ckpt),
                              "--attention-map", str(out)])
    assert res.exit_code == 0 and "bicycle" in res.stdout
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape == (224 * 2, 224 * 5, 3)  # image + 7 words, 5 per row
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), "--model", str(trained_ckpt),
                              "--attention-map", str(tmp_path / "nope" / "att.png")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_caption_cli_folders_and_globs(trained_ckpt, tmp_path):
    for name in TARGETS:
        (tmp_path / name).write_bytes((MEDIA / name).read_bytes())
    for arg in (str(tmp_path), str(tmp_path / "*.jpg")):
        res = runner.invoke(app, ["caption", arg, "--model", str(trained_ckpt), "--json"])
        assert res.exit_code == 0, res.output
        assert [json.loads(x)["image"] for x in res.stdout.splitlines()] == [
            str(tmp_path / n) for n in sorted(TARGETS)]


def test_caption_cli_bad_inputs_exit_2_with_one_line(trained_ckpt, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"garbage")
    cases = [
        (["caption", str(tmp_path / "missing.jpg"), "--model", str(trained_ckpt)], "does not exist"),
        (["caption", str(junk), "--model", str(trained_ckpt)], "cannot read image"),
        (["caption", str(MEDIA / "dog.jpg"), "--model", str(bad_ckpt)], "not a PyTorch checkpoint: it is a text file"),
        (["caption", str(MEDIA / "dog.jpg"), "--model", str(SAMPLE_CLIP)],
         "not a PyTorch checkpoint: it is an MP4/MOV video"),
        (["caption", str(MEDIA / "dog.jpg"), "--model", str(trained_ckpt), "--device", "tpu"], "--device"),
        (["caption", str(tmp_path / "*.png"), "--model", str(trained_ckpt)], "no images match"),
    ]
    for args, message in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_video_given_as_caption_model_is_one_line_exit_2():
    res = run_cli("file", str(SAMPLE_CLIP), "--no-segment", "--caption-model", str(SAMPLE_CLIP))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "is not a PyTorch checkpoint: it is an MP4/MOV video" in lines[0]


def test_missing_bundled_model_says_how_to_pass_one(monkeypatch, tmp_path):
    import streamcap.caption.api as api

    monkeypatch.setattr(api, "BUNDLED_CHECKPOINT", tmp_path / "caption_flickr8k_lite0.pt")
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg")])
    assert res.exit_code == 2 and "--model" in res.stderr


def test_bench_captions_reports_flicker_and_cut_latency(trained_ckpt):
    res = runner.invoke(app, ["bench-captions", "--video", str(MEDIA / "vtest.avi"), "--still",
                              str(MEDIA / "horses.jpg"), "--model", str(trained_ckpt), "--interval", "4",
                              "--cut-at", "8", "--beam", "1", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    f, r = report["flicker"], report["responsiveness"]
    assert f["runs"] == 20 and f["shown_changes_per_min"] <= f["raw_changes_per_min"]
    assert r["shown_after_cut"] == TARGETS["horses.jpg"]
    assert 0 <= r["raw_latency_s"] <= r["shown_latency_s"] <= 8


def test_caption_image_python_api(trained_ckpt):
    from streamcap.caption import caption_image

    text, score = caption_image(str(MEDIA / "horses.jpg"), model=trained_ckpt, beam=2)
    assert text == TARGETS["horses.jpg"] and score <= 0
    rgb = cv2.imread(str(MEDIA / "dog.jpg"))[:, :, ::-1].copy()
    assert caption_image(rgb, model=trained_ckpt, beam=2)[0] == TARGETS["dog.jpg"]


def test_flicker_stats_on_synthetic_captions():
    from streamcap.caption.flicker import flicker_stats
    from streamcap.caption.smoothing import CaptionSmoother

    words = ["a man walks down the street", "a man is walking on a street", "people walk on a street"]
    records = [(2.0 * i, words[i % 3], -1.0) for i in range(30)]  # 60 s of rewordings
    stats = flicker_stats(records, CaptionSmoother(confident_margin=None), duration_s=60.0)
    assert stats["raw_changes_per_min"] == 29 and stats["shown_changes_per_min"] == 0
    assert stats["distinct_raw"] == 3 and stats["distinct_shown"] == 1


def test_show_and_tell_checkpoint_captions_but_has_no_attention_map(tmp_path):
    torch.manual_seed(0)
    vocab = Vocab(["a", "dog", "runs"])
    cfg = CaptionModelConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=8, hidden_dim=8,
                             attention_dim=8, attention=False)
    ckpt = save_checkpoint(tmp_path / "st.pt", CaptionDecoder(cfg), vocab, "efficientnet_lite0")
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), "--model", str(ckpt), "--json", "--max-len", "4"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert set(row["caption"].split()) <= {"a", "dog", "runs"} and len(row["caption"].split()) <= 4
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), "--model", str(ckpt),
                              "--attention-map", str(tmp_path / "a.png")])
    assert res.exit_code == 2 and "no attention" in res.stderr


def test_caption_table_keeps_long_paths_apart(trained_ckpt, tmp_path):
    deep = tmp_path.joinpath(*["a_rather_long_folder_name"] * 6)
    deep.mkdir(parents=True)
    names = ["holiday_photo_from_the_long_trip_number_0001.jpg", "holiday_photo_from_the_long_trip_number_0002.jpg"]
    for name, src in zip(names, TARGETS):
        (deep / name).write_bytes((MEDIA / src).read_bytes())
    res = runner.invoke(app, ["caption", *(str(deep / n) for n in names), "--model", str(trained_ckpt)],
                        env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    for name, caption in zip(names, TARGETS.values()):
        row = [line for line in lines if caption in line]
        assert len(row) == 1 and name in row[0], res.stdout  # each row names its own image


def test_attention_maps_of_several_images_are_listed(trained_ckpt, tmp_path):
    for sub, name in (("one", "dog.jpg"), ("two", "horses.jpg")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "photo.jpg").write_bytes((MEDIA / name).read_bytes())  # the same stem twice
    out = tmp_path / "att.png"
    res = runner.invoke(app, ["caption", str(MEDIA / "dog.jpg"), str(tmp_path / "one" / "photo.jpg"),
                              str(tmp_path / "two" / "photo.jpg"), "--model", str(trained_ckpt), "--json",
                              "--attention-map", str(out)])
    assert res.exit_code == 0, res.output
    expected = [tmp_path / "att_dog.png", tmp_path / "att_photo_2.png", tmp_path / "att_photo_3.png"]
    assert sorted(tmp_path.glob("att*.png")) == expected and not out.exists()
    for path in expected:
        assert cv2.imread(str(path)) is not None and f": {path}" in res.stderr
    assert len(res.stdout.splitlines()) == 3  # stdout stays JSON lines
