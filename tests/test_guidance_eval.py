"""training.guidance_eval: objects from references, agreement shares, and a run on real photos."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, SHARED

from streamcap.errors import BadInputError
from training import guidance_eval as ge

FLICKR = SHARED / "data" / "flickr8k"


def test_a_class_counts_when_enough_references_name_it():
    refs = [[["two", "horses", "in", "a", "field"], ["a", "pony", "runs"], ["a", "dog", "runs"]]]
    assert ge.reference_labels(refs, 2) == [{"horse"}]
    assert ge.reference_labels(refs, 1) == [{"horse", "dog"}]


def test_object_agreement_right_and_exact():
    present = [{"horse", "person"}, {"dog"}, {"dog"}, set()]
    hyps = [["a", "man", "on", "a", "horse"],  # exact
            ["a", "horse", "and", "a", "dog"],  # names an absent class
            ["a", "puppy", "plays"],  # exact
            ["a", "cat"]]  # no present class: not judged
    assert ge.object_agreement(hyps, present) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    hyps[0] = ["a", "horse", "runs"]  # right (one present, none absent) but not exact
    assert ge.object_agreement(hyps, present) == (pytest.approx(2 / 3), pytest.approx(1 / 3))


def test_bad_grid_is_one_line():
    with pytest.raises(BadInputError, match="BONUS:PENALTY"):
        ge.parse_grid(["3"])


@pytest.mark.skipif(not FLICKR.is_dir(), reason="needs ../shared/data/flickr8k")
def test_runs_on_dev_photos_with_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "g.json"
    rc = ge.main(["--model", str(REPO / "streamcap" / "assets" / "caption_flickr8k_lite0.pt"), "--images", str(FLICKR / "images"),
                  "--captions", str(FLICKR / "captions.txt"), "--split-file", str(FLICKR / "dev.txt"),
                  "--max-images", "12", "--grid", "3:6", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["images"] == 12 and [s["bonus"] for s in result["settings"]] == [None, 3.0]
    for s in result["settings"]:
        assert 0 < s["cider_d"] and 0 <= s["objects_right"] <= 1
    assert "guidance      3:6" in capsys.readouterr().out
