"""Captions guided by detected objects: the guide, the bundled model on a photo of horses, and
`streamcap segment --json` -> `streamcap caption --objects-from` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import MEDIA, REPO, run_cli

from streamcap.caption.api import BUNDLED_CHECKPOINT, Captioner
from streamcap.caption.guidance import ObjectGuide, labels_in_text, read_objects_file
from streamcap.errors import BadInputError

HORSES = REPO / "samples" / "horses.jpg"
DOG = REPO / "samples" / "dog.jpg"
STOI = {w: i for i, w in enumerate(["<pad>", "<start>", "<end>", "<unk>", "a", "horse", "horses",
                                    "dog", "dogs", "man", "field"])}


def test_guide_favours_detected_classes_until_named_and_penalizes_unsupported_words():
    guide = ObjectGuide(["horse", "person", "toaster"], STOI, len(STOI), bonus=1.5, penalty=2.0)
    fresh, named = guide.bias([[4], [4, 6]])  # "a" / "a horses"
    assert fresh[STOI["horse"]] == fresh[STOI["horses"]] == fresh[STOI["man"]] == 1.5
    assert named[STOI["horse"]] == 0.0 and named[STOI["man"]] == 1.5  # horse named: its bonus stops
    assert fresh[STOI["dog"]] == fresh[STOI["dogs"]] == -2.0  # no dog detected
    assert fresh[STOI["a"]] == fresh[STOI["field"]] == 0.0  # not object words
    unknown = ObjectGuide(["toaster"], STOI, len(STOI)).bias([[4]])[0]  # a class the table lacks
    assert unknown.max() == 0.0 and unknown[STOI["dog"]] < 0  # no bonus; unsupported words still penalized


def test_no_labels_is_no_guide_and_labels_read_back_from_text():
    cap = Captioner(device="cpu") if BUNDLED_CHECKPOINT.is_file() else None
    if cap is not None:
        assert cap.guide(None) is None and cap.guide([]) is None
    assert labels_in_text("two brown dogs chase a man".split()) == {"dog", "person"}


@pytest.fixture(scope="module")
def bundled():
    if not BUNDLED_CHECKPOINT.is_file():
        pytest.skip("bundled caption model not installed")
    torch.set_num_threads(1)
    return Captioner(device="cpu", beam=3)


def test_detected_horses_turn_the_dogs_of_the_bundled_model_into_horses(bundled):
    plain, guided = bundled.caption_images([HORSES] * 2, objects=[None, ["horse"]])
    assert labels_in_text(plain.tokens) == {"dog"}  # what the model says alone (Flickr8k has few horses)
    assert labels_in_text(guided.tokens) == {"horse"}
    assert guided.score <= 0  # the model's own log-probability, not the bias


def write_objects(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_caption_objects_from_hand_written_file(bundled, tmp_path):
    objects = tmp_path / "o.jsonl"
    write_objects(objects, [{"path": str(HORSES), "size": [640, 480],
                             "objects": [{"label": "horse", "score": 0.9, "box": [0, 0, 10, 10]}]},
                            {"path": str(DOG), "size": [640, 480], "objects": []}])
    res = run_cli("caption", str(HORSES), str(DOG), "--json", "--objects-from", str(objects))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["objects"] for r in rows] == [["horse"], []]
    assert labels_in_text(rows[0]["caption"].split()) == {"horse"}
    plain = run_cli("caption", str(DOG), "--json")
    assert json.loads(plain.stdout)["caption"] == rows[1]["caption"]  # no objects: as without the option
    assert "objects" not in json.loads(plain.stdout)


@pytest.mark.parametrize("content, match", [
    ("not json\n", "line 1"),
    ('{"path": "x.jpg", "size": [1, 1], "objects": []}\n{"path": "y.jpg"}\n', "line 2"),
    ('{"path": "x.jpg", "objects": [{"score": 0.9}]}\n', "line 1"),
])
def test_bad_objects_lines_are_bad_input(tmp_path, content, match):
    path = tmp_path / "o.jsonl"
    path.write_text(content)
    with pytest.raises(BadInputError, match=match):
        read_objects_file(path)


def test_bad_objects_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "o.jsonl"
    bad.write_text("{broken\n")
    for args in (["--objects-from", str(bad)], ["--objects-from", str(tmp_path / "missing.jsonl")]):
        res = run_cli("caption", str(HORSES), *args)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    other = tmp_path / "other.jsonl"
    write_objects(other, [{"path": str(DOG), "size": [1, 1], "objects": []}])
    res = run_cli("caption", str(HORSES), "--objects-from", str(other))
    assert res.returncode == 2 and "no objects for image" in res.stderr


def test_segment_json_feeds_caption_objects_from_by_path(bundled, tmp_path):
    seg = run_cli("segment", str(HORSES), str(DOG), "--json", "--seg-weights", "random", "--seg-size", "256", "--device", "cpu",
                  timeout=300)
    assert seg.returncode == 0, seg.stderr
    objects = tmp_path / "o.jsonl"
    objects.write_text(seg.stdout)
    res = run_cli("caption", str(HORSES), str(DOG), "--json", "--objects-from", str(objects))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    by_path = {r["path"]: r["objects"] for r in map(json.loads, seg.stdout.splitlines())}
    assert [r["image"] for r in rows] == [str(HORSES), str(DOG)]
    assert [r["objects"] for r in rows] == [[o["label"] for o in by_path[r["image"]] if o["score"] >= 0.5]
                                            for r in rows]
