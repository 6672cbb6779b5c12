"""Caption dataset parsers and splits.

Every parser returns a :class:`CaptionSet`: image file names (relative to the images folder),
their captions in file order, and, where the format carries one, each image's split.
A malformed line raises :class:`streamcap.errors.BadInputError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from streamcap.errors import BadInputError

FORMATS = ("flickr8k", "flickr30k", "coco", "karpathy", "csv")

FORMAT_HELP = """\
Dataset formats (--dataset):
  flickr8k   Flickr8k.token.txt lines 'IMG.jpg#N<TAB>caption', or the 'image,caption' CSV
             (header line 'image,caption', captions with commas quoted) that Kaggle's copy
             uses; the kind is detected from the first line.
  flickr30k  Kaggle's results.csv: header 'image_name| comment_number| comment', then lines
             'IMG.jpg| N| caption' (fields separated by '|').
  coco       COCO captions JSON (captions_train2014.json style): {"images": [{"id",
             "file_name"}], "annotations": [{"image_id", "caption"}]}.
  karpathy   Karpathy split JSON (dataset_flickr8k.json style): {"images": [{"filename",
             "split": train|val|test|restval, "sentences": [{"raw", "tokens"}]}]};
             'filepath' is prefixed when present; restval counts as train, val as dev.
  csv        plain 'image,caption' CSV (a header line is optional, quotes as in CSV).
Splits: --split-file/--val-split-file (one image file name a line) pick the train/dev
images; otherwise the file's own split (karpathy) is used, otherwise a seeded random split
(--val-fraction, --seed).
"""

_FLICKR_TOKEN_RE = re.compile(r"^(?P<image>[^\t#]+)#(?P<n>\d+)\t(?P<caption>.*)$")


@dataclass
class CaptionSet:
    """Images and their captions, in the order the file lists them."""

    captions: "OrderedDict[str, list[str]]" = field(default_factory=OrderedDict)
    splits: dict[str, str] = field(default_factory=dict)  # image -> train|dev|test

    def add(self, image: str, caption: str, split: str | None = None) -> None:
        self.captions.setdefault(image, []).append(caption)
        if split is not None:
            self.splits[image] = split

    @property
    def images(self) -> list[str]:
        return list(self.captions)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, images: list[str]) -> "CaptionSet":
        out = CaptionSet()
        for name in images:
            out.captions[name] = list(self.captions[name])
            if name in self.splits:
                out.splits[name] = self.splits[name]
        return out


def _bad(path: Path, line: int | None, why: str) -> BadInputError:
    where = f"{path}:{line}" if line is not None else str(path)
    return BadInputError(f"{where}: {why}")


def _read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: captions file not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def parse_flickr8k(path: Path) -> CaptionSet:
    """Flickr8k.token.txt or the Kaggle 'image,caption' CSV (detected from the first line)."""
    path = Path(path)
    text = _read_text(path)
    first = text.split("\n", 1)[0].strip().lower()
    if first.replace(" ", "") == "image,caption" or ("\t" not in first and "#" not in first):
        return parse_csv(path)
    out = CaptionSet()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _FLICKR_TOKEN_RE.match(line.rstrip("\r"))
        if not m or not m.group("caption").strip():
            raise _bad(path, lineno, f"expected 'IMAGE.jpg#N<TAB>caption', got {line[:60]!r}")
        out.add(m.group("image").strip(), m.group("caption").strip())
    if not out:
        raise _bad(path, None, "no captions found")
    return out


def parse_csv(path: Path) -> CaptionSet:
    """Plain 'image,caption' CSV; a header line 'image,caption' is optional."""
    path = Path(path)
    text = _read_text(path)
    out = CaptionSet()
    reader = csv.reader(io.StringIO(text, newline=""))
    for row in reader:
        lineno = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] == ["image", "caption"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise _bad(path, lineno, f"expected 'image,caption' (quote captions that contain "
                       f"commas), got {len(row)} field(s): {','.join(row)[:60]!r}")
        out.add(row[0].strip(), row[1].strip())
    if not out:
        raise _bad(path, None, "no captions found")
    return out


def parse_flickr30k(path: Path) -> CaptionSet:
    """Kaggle's Flickr30k results.csv: 'image_name| comment_number| comment'."""
    path = Path(path)
    text = _read_text(path)
    out = CaptionSet()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if lineno == 1 and parts and parts[0].lower() == "image_name":
            continue
        if len(parts) < 3 or not parts[0] or not parts[1].isdigit() or not parts[2]:
            raise _bad(path, lineno, f"expected 'image_name| comment_number| comment', "
                       f"got {line[:60]!r}")
        out.add(parts[0], parts[2])
    if not out:
        raise _bad(path, None, "no captions found")
    return out


def _load_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad(path, err.lineno, f"invalid JSON: {err.msg} (column {err.colno})") from err


def parse_coco(path: Path) -> CaptionSet:
    """COCO captions JSON: images (id, file_name) + annotations (image_id, caption)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise _bad(path, None, "expected a COCO captions JSON object with 'images' and "
                   "'annotations'")
    names: dict = {}
    for i, img in enumerate(data["images"]):
        try:
            names[img["id"]] = str(img["file_name"])
        except (KeyError, TypeError) as err:
            raise _bad(path, None, f"images[{i}] lacks 'id'/'file_name'") from err
    out = CaptionSet()
    for i, ann in enumerate(data["annotations"]):
        try:
            image_id, caption = ann["image_id"], str(ann["caption"]).strip()
        except (KeyError, TypeError) as err:
            raise _bad(path, None, f"annotations[{i}] lacks 'image_id'/'caption'") from err
        if image_id not in names:
            raise _bad(path, None, f"annotations[{i}] names unknown image_id {image_id!r}")
        out.add(names[image_id], caption)
    if not out:
        raise _bad(path, None, "no captions found")
    return out


_KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


def parse_karpathy(path: Path) -> CaptionSet:
    """Karpathy split JSON: images[].filename, .split, .sentences[].raw|tokens."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise _bad(path, None, "expected a Karpathy split JSON object with an 'images' list")
    out = CaptionSet()
    for i, img in enumerate(data["images"]):
        try:
            name = str(img["filename"])
            if img.get("filepath"):
                name = f"{img['filepath']}/{name}"
            split = _KARPATHY_SPLITS.get(str(img.get("split", "train")), "train")
            sentences = img["sentences"]
            for j, sent in enumerate(sentences):
                raw = sent.get("raw") or " ".join(sent.get("tokens", []))
                if not str(raw).strip():
                    raise _bad(path, None, f"images[{i}].sentences[{j}] is empty")
                out.add(name, str(raw).strip(), split)
        except (KeyError, TypeError, AttributeError) as err:
            raise _bad(path, None, f"images[{i}] lacks 'filename'/'sentences' "
                       f"(or a sentence lacks 'raw'/'tokens')") from err
    if not out:
        raise _bad(path, None, "no captions found")
    return out


PARSERS = {
    "flickr8k": parse_flickr8k,
    "flickr30k": parse_flickr30k,
    "coco": parse_coco,
    "karpathy": parse_karpathy,
    "csv": parse_csv,
}


def load_captions(dataset: str, path: Path) -> CaptionSet:
    if dataset not in PARSERS:
        raise BadInputError(f"unknown dataset format {dataset!r}; use one of {', '.join(FORMATS)}")
    return PARSERS[dataset](Path(path))


def read_split_file(path: Path) -> list[str]:
    """One image file name a line (blank lines and '#' comments ignored)."""
    path = Path(path)
    names = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line.split()) != 1:
            raise _bad(path, lineno, f"expected one image file name, got {line[:60]!r}")
        names.append(line)
    return names


def make_splits(
    data: CaptionSet,
    split_file: Path | None = None,
    val_split_file: Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    images_dir: Path | None = None,
) -> dict[str, list[str]]:
    """Return {'train': [...], 'dev': [...]} image lists.

    Split files win; else the dataset's own split field; else a seeded random split.
    Images missing from the images folder (when given) are dropped.
    """
    available = data.images
    if images_dir is not None:
        images_dir = Path(images_dir)
        available = [n for n in available if (images_dir / n).is_file()]
        if not available:
            raise BadInputError(f"{images_dir}: none of the captioned images are in this folder")
    known = set(available)
    splits: dict[str, list[str]] = {}
    if split_file is not None:
        splits["train"] = [n for n in read_split_file(split_file) if n in known]
    if val_split_file is not None:
        splits["dev"] = [n for n in read_split_file(val_split_file) if n in known]
    if not splits and data.splits:
        for name in available:
            splits.setdefault(data.splits.get(name, "train"), []).append(name)
    if "train" not in splits or "dev" not in splits:
        taken = set(splits.get("train", [])) | set(splits.get("dev", []))
        rest = sorted(n for n in available if n not in taken)
        random.Random(seed).shuffle(rest)
        if "dev" not in splits:
            n_dev = max(1, int(round(len(rest) * val_fraction))) if len(rest) > 1 else 0
            splits["dev"], rest = rest[:n_dev], rest[n_dev:]
        if "train" not in splits:
            splits["train"] = rest
    splits.setdefault("test", [])
    if not splits["train"]:
        raise BadInputError("the training split is empty (check --split-file and --images)")
    return splits
