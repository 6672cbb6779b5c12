"""Caption dataset parsers on small fixture files, malformed lines included."""

from __future__ import annotations

import json

import pytest

from streamcap.errors import BadInputError
from training.datasets import load_captions, make_splits, read_split_file
from training.train import main as train_main


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_flickr8k_token_file(tmp_path):
    path = write(tmp_path, "Flickr8k.token.txt",
                 "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog , running .\nb.jpg#0\tTwo kids play .\n")
    data = load_captions("flickr8k", path)
    assert data.images == ["a.jpg", "b.jpg"]
    assert data.captions["a.jpg"] == ["A dog runs .", "A brown dog , running ."]


def test_flickr8k_token_file_malformed_line(tmp_path):
    path = write(tmp_path, "Flickr8k.token.txt", "a.jpg#0\tA dog runs .\na.jpg A dog without a tab\n")
    with pytest.raises(BadInputError, match=r"Flickr8k\.token\.txt:2"):
        load_captions("flickr8k", path)


def test_flickr8k_kaggle_csv_with_quotes(tmp_path):
    path = write(tmp_path, "captions.txt",
                 'image,caption\na.jpg,"A dog, brown, runs ."\na.jpg,A dog runs .\nb.jpg,Kids play\n')
    data = load_captions("flickr8k", path)
    assert data.captions["a.jpg"] == ["A dog, brown, runs .", "A dog runs ."]
    assert len(data) == 2


def test_csv_malformed_line_names_file_and_line(tmp_path):
    path = write(tmp_path, "caps.csv", "image,caption\na.jpg,A dog\nb.jpg,unquoted, comma\n")
    with pytest.raises(BadInputError, match=r"caps\.csv:3"):
        load_captions("csv", path)


def test_plain_csv_without_header(tmp_path):
    path = write(tmp_path, "caps.csv", "a.jpg,A dog\nb.jpg,\"A cat, sleeping\"\n")
    data = load_captions("csv", path)
    assert data.captions == {"a.jpg": ["A dog"], "b.jpg": ["A cat, sleeping"]}


def test_flickr30k_results_csv(tmp_path):
    path = write(tmp_path, "results.csv",
                 "image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n"
                 "1000092795.jpg| 1| Two men | in a yard .\n10002456.jpg| 0| Workers look down .\n")
    data = load_captions("flickr30k", path)
    assert data.captions["1000092795.jpg"] == ["Two young guys .", "Two men | in a yard ."]
    assert data.images == ["1000092795.jpg", "10002456.jpg"]


def test_flickr30k_malformed_line(tmp_path):
    # the real Kaggle file has one such line: the comment number and the comment fused
    path = write(tmp_path, "results.csv",
                 "image_name| comment_number| comment\na.jpg| 0| A dog .\nb.jpg| 4 A dog runs .\n")
    with pytest.raises(BadInputError, match=r"results\.csv:3"):
        load_captions("flickr30k", path)


def test_coco_captions_json(tmp_path):
    obj = {"images": [{"id": 1, "file_name": "COCO_1.jpg"}, {"id": 2, "file_name": "COCO_2.jpg"}],
           "annotations": [{"image_id": 2, "id": 9, "caption": "A cat."},
                           {"image_id": 1, "id": 10, "caption": "A bus."},
                           {"image_id": 2, "id": 11, "caption": "A cat on a mat."}]}
    data = load_captions("coco", write(tmp_path, "captions_train2014.json", json.dumps(obj)))
    assert data.captions["COCO_2.jpg"] == ["A cat.", "A cat on a mat."]
    assert data.captions["COCO_1.jpg"] == ["A bus."]


def test_coco_broken_json_names_line(tmp_path):
    path = write(tmp_path, "captions_val2014.json", '{"images": [],\n "annotations": [\n  {"image_id": 1,,}\n]}')
    with pytest.raises(BadInputError, match=r"captions_val2014\.json:3"):
        load_captions("coco", path)


def test_coco_unknown_image_id(tmp_path):
    obj = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 5, "caption": "x"}]}
    with pytest.raises(BadInputError, match=r"coco\.json.*annotations\[0\]"):
        load_captions("coco", write(tmp_path, "coco.json", json.dumps(obj)))


def test_karpathy_json_and_its_splits(tmp_path):
    obj = {"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]},
        {"filename": "b.jpg", "split": "restval", "sentences": [{"tokens": ["a", "cat"]}]},
        {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "A car."}]},
        {"filename": "d.jpg", "split": "test", "sentences": [{"raw": "A bus."}]}]}
    data = load_captions("karpathy", write(tmp_path, "dataset_flickr8k.json", json.dumps(obj)))
    assert data.captions["b.jpg"] == ["a cat"]
    splits = make_splits(data)
    assert splits["train"] == ["a.jpg", "b.jpg"] and splits["dev"] == ["c.jpg"]
    assert splits["test"] == ["d.jpg"]


def test_karpathy_missing_sentences(tmp_path):
    obj = {"images": [{"filename": "a.jpg", "split": "train"}]}
    with pytest.raises(BadInputError, match=r"dataset_x\.json.*images\[0\]"):
        load_captions("karpathy", write(tmp_path, "dataset_x.json", json.dumps(obj)))


def test_seeded_split_is_reproducible_and_disjoint(tmp_path):
    lines = "".join(f"img{i}.jpg,caption {i}\n" for i in range(50))
    data = load_captions("csv", write(tmp_path, "caps.csv", lines))
    a = make_splits(data, val_fraction=0.2, seed=3)
    b = make_splits(data, val_fraction=0.2, seed=3)
    c = make_splits(data, val_fraction=0.2, seed=4)
    assert a == b and a["dev"] != c["dev"]
    assert len(a["dev"]) == 10 and not set(a["dev"]) & set(a["train"])


def test_split_files(tmp_path):
    data = load_captions("csv", write(tmp_path, "caps.csv", "a.jpg,x\nb.jpg,y\nc.jpg,z\n"))
    train = write(tmp_path, "train.txt", "a.jpg\nc.jpg\nmissing.jpg\n")
    dev = write(tmp_path, "dev.txt", "b.jpg\n")
    splits = make_splits(data, train, dev)
    assert splits["train"] == ["a.jpg", "c.jpg"] and splits["dev"] == ["b.jpg"]
    bad = write(tmp_path, "bad.txt", "a.jpg\ntwo names.jpg\n")
    with pytest.raises(BadInputError, match=r"bad\.txt:2"):
        read_split_file(bad)


def test_train_entry_point_reports_bad_line_and_exits_2(tmp_path, capsys):
    caps = write(tmp_path, "captions.txt", "image,caption\na.jpg,A dog\nb.jpg\n")
    code = train_main(["--dataset", "flickr8k", "--images", str(tmp_path), "--captions", str(caps),
                       "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "captions.txt:3" in err and err.count("\n") == 1
