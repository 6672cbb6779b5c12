"""Alert rules: what to look for, where, for how long, and how often to tell.

A rule watches either an object class (``object: person``), optionally inside a polygon zone and
for at least ``min_duration`` seconds, or words in the shown caption (``caption: "dog"``: every
word must appear as a whole word, case-insensitive). ``cooldown`` is the least time between two
alerts of one rule on one camera; ``cameras`` limits a rule to some cameras (names or globs).

Rules come from a YAML file (``load_rules``; every mistake is one line naming the file, the line
and the rule) or from the command line (``rules_from_flags``).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcap.errors import BadInputError

DEFAULT_COOLDOWN_S = 30.0
RULE_FIELDS = ("name", "object", "caption", "zone", "zone_units", "min_duration", "cooldown", "cameras",
               "min_score")
ZONE_UNITS = ("auto", "normalized", "pixels")
_WORD_RE = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


@dataclass(frozen=True)
class Zone:
    """A polygon in pixels, or in fractions of the frame's width and height (``normalized``)."""

    points: tuple[tuple[float, float], ...]
    normalized: bool

    def contains(self, x: float, y: float, size: tuple[int, int] | None) -> bool | None:
        """Whether pixel point (x, y) lies inside; None when a normalized zone has no frame size."""
        if self.normalized:
            if size is None:
                return None
            w, h = size
            x, y = x / w, y / h
        return point_in_polygon(x, y, self.points)


def point_in_polygon(x: float, y: float, points: tuple[tuple[float, float], ...]) -> bool:
    """Even-odd rule: count the polygon edges a ray from (x, y) to the right crosses."""
    inside = False
    n = len(points)
    for i in range(n):
        (x1, y1), (x2, y2) = points[i], points[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < cross:
                inside = not inside
    return inside


@dataclass(frozen=True)
class Rule:
    name: str
    object: str | None = None
    caption: tuple[str, ...] = ()
    zone: Zone | None = None
    min_duration_s: float = 0.0
    cooldown_s: float = DEFAULT_COOLDOWN_S
    cameras: tuple[str, ...] = ()
    min_score: float = 0.0
    where: str = field(default="", compare=False)  # "rules.yaml:7" or "--alert-object", for messages

    @property
    def kind(self) -> str:
        return "object" if self.object is not None else "caption"

    def applies_to(self, camera: str | None) -> bool:
        if not self.cameras:
            return True
        return camera is not None and any(fnmatch.fnmatchcase(camera, pat) for pat in self.cameras)

    def caption_matches(self, text: str | None) -> bool:
        if not text:
            return False
        present = set(words_of(text))
        return all(w in present for w in self.caption)


def rules_from_flags(objects: list[str] | None = None, captions: list[str] | None = None, *,
                     cooldown_s: float = DEFAULT_COOLDOWN_S, min_duration_s: float = 0.0) -> list[Rule]:
    """One rule per ``--alert-object CLASS`` and ``--alert-caption WORDS``."""
    rules = []
    for obj in objects or []:
        label = obj.strip()
        if not label:
            raise BadInputError("--alert-object needs a class name, e.g. --alert-object person")
        rules.append(Rule(name=f"object:{label}", object=label, cooldown_s=cooldown_s,
                          min_duration_s=min_duration_s, where="--alert-object"))
    for text in captions or []:
        words = tuple(words_of(text))
        if not words:
            raise BadInputError(f"--alert-caption needs words to look for, got {text!r}")
        rules.append(Rule(name=f"caption:{' '.join(words)}", caption=words, cooldown_s=cooldown_s,
                          min_duration_s=min_duration_s, where="--alert-caption"))
    _check_unique(rules)
    return rules


# -- the YAML file ---------------------------------------------------------------------------------

class _LineLoader:
    """PyYAML's safe loader, with each mapping's line and each key's line kept beside it."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def construct_mapping(loader, node, deep=False):
            mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
            mapping["__line__"] = node.start_mark.line + 1
            mapping["__lines__"] = {k.value: k.start_mark.line + 1 for k, _ in node.value
                                    if isinstance(k, yaml.ScalarNode)}
            return mapping

        Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def load_rules(path: str | Path) -> list[Rule]:
    """Rules from a YAML file: ``rules:`` followed by a list of rules (see README, Alerts)."""
    p = Path(path)
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise BadInputError("--alerts needs PyYAML: pip install pyyaml") from None
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"alert rules file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"cannot read alert rules {p}: {getattr(err, 'strerror', None) or err}") from None
    try:
        doc = _LineLoader.load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BadInputError(f"{p}{line}: not valid YAML: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise BadInputError(f"{p}: expected a mapping with a 'rules:' list, e.g. rules: [{{object: person}}]")
    unknown = [k for k in doc if k not in ("rules", "__line__", "__lines__")]
    if unknown:
        raise BadInputError(f"{p}:{doc['__lines__'].get(unknown[0], 1)}: unknown top-level key {unknown[0]!r} "
                            f"(only 'rules')")
    if not doc["rules"]:
        raise BadInputError(f"{p}:{doc['__lines__'].get('rules', 1)}: 'rules' is empty")
    rules = [parse_rule(item, i, p, doc["__lines__"].get("rules", 1)) for i, item in enumerate(doc["rules"])]
    _check_unique(rules)
    return rules


def parse_rule(item: Any, index: int, path: Path, list_line: int) -> Rule:
    if not isinstance(item, dict):
        raise BadInputError(f"{path}:{list_line}: rule {index + 1} is not a mapping (name: ..., object: ...)")
    line, lines = item.pop("__line__"), item.pop("__lines__")
    label = f"rule {item['name']!r}" if isinstance(item.get("name"), str) else f"rule {index + 1}"

    def bad(key: str | None, message: str) -> BadInputError:
        return BadInputError(f"{path}:{lines.get(key, line)}: {label}: {message}")

    for key in item:
        if key not in RULE_FIELDS:
            raise bad(key, f"unknown field {key!r} (known: {', '.join(RULE_FIELDS)})")
    has_obj, has_cap = item.get("object") is not None, item.get("caption") is not None
    if has_obj == has_cap:
        raise bad(None, "needs exactly one of 'object' (a class name) or 'caption' (words)")
    obj = caption = None
    if has_obj:
        obj = item["object"]
        if not isinstance(obj, str) or not obj.strip():
            raise bad("object", "'object' must be a class name, e.g. person")
        obj = obj.strip()
    else:
        raw = item["caption"]
        if isinstance(raw, list):
            raw = " ".join(str(w) for w in raw)
        caption = tuple(words_of(str(raw)))
        if not caption:
            raise bad("caption", "'caption' must name words to look for")
    name = item.get("name", f"object:{obj}" if obj else f"caption:{' '.join(caption)}")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "'name' must be text")
    zone = None
    if "zone" in item:
        if caption:
            raise bad("zone", "a zone applies to object rules only")
        zone = _parse_zone(item["zone"], item.get("zone_units", "auto"), lambda m, k="zone": bad(k, m))
    elif "zone_units" in item:
        raise bad("zone_units", "'zone_units' without a 'zone'")
    min_duration = _number(item.get("min_duration", 0.0), lambda m: bad("min_duration", m), "min_duration")
    cooldown = _number(item.get("cooldown", DEFAULT_COOLDOWN_S), lambda m: bad("cooldown", m), "cooldown")
    min_score = _number(item.get("min_score", 0.0), lambda m: bad("min_score", m), "min_score")
    if min_score > 1:
        raise bad("min_score", f"'min_score' must be between 0 and 1, got {min_score}")
    if min_score and caption:
        raise bad("min_score", "'min_score' applies to object rules only")
    cameras = item.get("cameras", ())
    if isinstance(cameras, str):
        cameras = (cameras,)
    if not isinstance(cameras, (list, tuple)) or not all(isinstance(c, str) and c for c in cameras):
        raise bad("cameras", "'cameras' must be a camera name or a list of names (globs allowed)")
    return Rule(name=name.strip(), object=obj, caption=caption or (), zone=zone, min_duration_s=min_duration,
                cooldown_s=cooldown, cameras=tuple(cameras), min_score=min_score, where=f"{path}:{line}")


def _number(value: Any, bad, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise bad(f"{key!r} must be a number of 0 or more, got {value!r}")
    return float(value)


def _parse_zone(value: Any, units: Any, bad) -> Zone:
    if units not in ZONE_UNITS:
        raise bad(f"'zone_units' must be one of {', '.join(ZONE_UNITS)}, got {units!r}", "zone_units")
    ok = isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                     for c in p) for p in value)
    if not ok:
        raise bad("'zone' must be a list of [x, y] points, e.g. [[0, 0], [0.5, 0], [0.5, 1]]")
    if len(value) < 3:
        raise bad(f"'zone' needs at least 3 points, got {len(value)}")
    points = tuple((float(x), float(y)) for x, y in value)
    if any(c < 0 for p in points for c in p):
        raise bad("'zone' coordinates must be 0 or more")
    small = all(c <= 1.0 for p in points for c in p)
    if units == "normalized" and not small:
        raise bad("a normalized 'zone' has coordinates between 0 and 1")
    normalized = units == "normalized" or (units == "auto" and small)
    return Zone(points=points, normalized=normalized)


def _check_unique(rules: list[Rule]) -> None:
    seen: dict[str, Rule] = {}
    for r in rules:
        if r.name in seen:
            raise BadInputError(f"{r.where}: two rules are named {r.name!r} (the first at {seen[r.name].where})")
        seen[r.name] = r
