"""Captions guided by the objects the segmenter found (COCO labels).

The caption model (trained on Flickr8k) confuses animals and vehicles that Mask R-CNN (COCO)
tells apart: "two dogs" on a photo of horses. ``ObjectGuide`` turns a frame's object labels
into a per-step bias on the decoder's log-probabilities, a soft form of guided beam search
(after Anderson et al. 2017, which forces the words; here they are favoured):

- each detected class that the hypothesis has not named yet adds ``bonus`` to all of its
  vocabulary words (``COCO_WORDS``), so beams that name it rise; once named, the bonus stops;
- the words of the classes in ``COCO_WORDS`` that no detection supports get ``-penalty``.

No labels (None or an empty list): no guide, decoding as without objects. Labels the table does
not know get no bonus (the words of the table's classes are still penalized: nothing detected
supports them). Scores reported stay the model's own log-probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch

from streamcap.errors import BadInputError

DEFAULT_BONUS = 3.0
DEFAULT_PENALTY = 6.0
DEFAULT_MIN_SCORE = 0.5

_PEOPLE = ("man men woman women boy boys girl girls people person persons child children kid kids "
           "lady ladies guy guys player players baby babies toddler toddlers teenager teenagers adult "
           "adults rider riders biker bikers cyclist cyclists skier skiers snowboarder surfer surfers "
           "skateboarder skateboarders hiker hikers climber climbers swimmer swimmers jockey crowd")

# COCO class (torchvision's names) -> the vocabulary words that name it. Words missing from a
# model's vocabulary are dropped when a guide is built. Only classes whose words the caption
# model confuses or invents are listed; the rest are not guided.
COCO_WORDS: dict[str, tuple[str, ...]] = {
    "person": tuple(_PEOPLE.split()),
    "bicycle": ("bicycle", "bicycles", "bike", "bikes"),
    "car": ("car", "cars"),
    "motorcycle": ("motorcycle", "motorcycles", "motorbike", "motorbikes", "dirt"),
    "airplane": ("airplane", "airplanes", "plane", "planes", "jet"),
    "bus": ("bus", "buses"),
    "train": ("train", "trains"),
    "truck": ("truck", "trucks"),
    "boat": ("boat", "boats", "canoe", "kayak", "raft", "sailboat", "ship"),
    "bird": ("bird", "birds", "duck", "ducks", "seagull", "seagulls", "pigeons", "eagle"),
    "cat": ("cat", "cats", "kitten"),
    "dog": ("dog", "dogs", "puppy", "puppies"),
    "horse": ("horse", "horses", "pony", "ponies"),
    "sheep": ("sheep", "lamb"),
    "cow": ("cow", "cows", "cattle", "bull", "bulls", "calf"),
    "elephant": ("elephant", "elephants"),
    "bear": ("bear", "bears"),
    "zebra": ("zebra", "zebras"),
    "giraffe": ("giraffe", "giraffes"),
    "frisbee": ("frisbee", "frisbees"),
    "skis": ("skis", "skiing", "skier", "skiers"),
    "snowboard": ("snowboard", "snowboarder", "snowboarding"),
    "kite": ("kite", "kites"),
    "skateboard": ("skateboard", "skateboarder", "skateboarding", "skateboards"),
    "surfboard": ("surfboard", "surfer", "surfing", "surfboards"),
    "umbrella": ("umbrella", "umbrellas"),
    "bench": ("bench", "benches"),
}


def labels_in_text(tokens: Sequence[str]) -> set[str]:
    """COCO classes named in a caption's tokens (the table read backwards)."""
    words = set(tokens)
    return {label for label, names in COCO_WORDS.items() if words & set(names)}


class ObjectGuide:
    """Bias for the decoder from one image's object labels; ``vocab`` maps words to ids."""

    def __init__(self, labels: Iterable[str], stoi: dict[str, int], vocab_size: int,
                 bonus: float = DEFAULT_BONUS, penalty: float = DEFAULT_PENALTY) -> None:
        present = {str(x) for x in labels}
        ids = {label: [stoi[w] for w in words if w in stoi] for label, words in COCO_WORDS.items()}
        self.detected = {label: set(v) for label, v in ids.items() if label in present and v}
        supported = set().union(*self.detected.values()) if self.detected else set()
        self.base = torch.zeros(vocab_size)  # (V,)
        for label, v in ids.items():
            unsupported = [i for i in v if i not in supported]
            if label not in present and unsupported:
                self.base[unsupported] = -penalty
        self.bonus = bonus

    def bias(self, hyp_tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """(R, V) to add to the log-probabilities of R hypotheses with these tokens so far."""
        rows = self.base.unsqueeze(0).repeat(len(hyp_tokens), 1)  # (R, V)
        for r, tokens in enumerate(hyp_tokens):
            said = set(tokens)
            for ids in self.detected.values():
                if not said & ids:
                    rows[r, list(ids)] += self.bonus
        return rows


def object_labels(objects: Iterable[dict], min_score: float = DEFAULT_MIN_SCORE) -> list[str]:
    """Labels of ``[{"label", "score", ...}]`` scoring at least ``min_score``."""
    return [str(o["label"]) for o in objects if float(o.get("score", 1.0)) >= min_score]


def read_objects_file(path: str | Path) -> dict[str, list[dict]]:
    """``streamcap segment --json`` lines -> {path: objects}; BadInputError names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"objects file {path} does not exist")
    out: dict[str, list[dict]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read objects file {path}: {type(err).__name__}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            objects = record["objects"]
            key = record["path"]
            if not isinstance(key, str) or not isinstance(objects, list):
                raise TypeError
            for o in objects:
                if not isinstance(o["label"], str):
                    raise TypeError
                float(o.get("score", 1.0))
        except (ValueError, KeyError, TypeError):
            raise BadInputError(f"{path} line {n}: expected a `streamcap segment --json` record "
                                '{"path", "size", "objects": [{"label", "score", "box"}]}') from None
        out[key] = objects
    return out
