"""cameras.yaml: cameras, their per-camera options (the CLI's option names), alerts and the
resources of each camera group, validated with one-line errors that name the camera and field.

    defaults:                 # options for every camera (CLI names, without the dashes)
      no-caption: true
    groups:                   # resources of a camera group (one Ray actor per group)
      gpu-a: {num_gpus: 1, num_cpus: 2}
    cameras:
      - name: door
        url_env: DOOR_URL     # or url: rtsp://user:pass@10.0.0.5/stream
        group: gpu-a          # default: a group of its own
        options: {seg-every: 4, caption-interval: 5}
        alerts: [{object: person}]   # this camera's own alert rules (as in an --alerts file)

Source options (stride, drop, timeouts, ...) may differ between cameras of one group; engine
options (models, seg-every, caption-interval, ...) apply to the whole group, because a group
runs one engine, so cameras of one group must agree on them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streamcap.capture import redact_url
from streamcap.errors import BadInputError


def _num(kind: type, lo: float | None = None, hi: float | None = None, *, above: bool = False) -> Callable:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"must be {'a whole number' if kind is int else 'a number'}, got {value!r}")
        if above and not value > lo:
            raise ValueError(f"must be more than {lo:g}, got {value!r}")
        if not above and lo is not None and value < lo:
            raise ValueError(f"must be {lo:g} or more, got {value!r}")
        if hi is not None and value > hi:
            raise ValueError(f"must be {hi:g} or less, got {value!r}")
        return kind(value)
    return check


def _choice(*allowed: str) -> Callable:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return value
    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"must be text, got {value!r}")
    return str(value)


def _seg_every(value: Any) -> str:
    from streamcap.keyframes import parse_seg_every

    text = _text(value)
    try:
        parse_seg_every(text)
    except Exception as err:  # its own message says what is allowed
        raise ValueError(str(err).split(": ", 1)[-1]) from None
    return text


# Options a camera may set, by the CLI's name: (monitor's parameter, check).
SOURCE_OPTIONS: dict[str, tuple[str, Callable]] = {
    "stride": ("stride", _num(int, 1)),
    "drop": ("drop", _choice("latest", "block")),
    "queue-size": ("queue_size", _num(int, 1)),
    "rtsp-transport": ("rtsp_transport", _choice("tcp", "udp")),
    "max-retries": ("max_retries", _num(int, 0)),
    "open-timeout": ("open_timeout", _num(float, 0, above=True)),
    "read-timeout": ("read_timeout", _num(float, 0, above=True)),
    "first-frame-timeout": ("first_frame_timeout", _num(float, 0, above=True)),
    "watchdog": ("watchdog", _num(float, 0, above=True)),
    "backoff-max": ("backoff_max", _num(float, 0, above=True)),
}
ENGINE_OPTIONS: dict[str, tuple[str, Callable]] = {
    "no-segment": ("no_segment", _flag),
    "seg-model": ("seg_model", _choice("v1", "v2")),
    "seg-weights": ("seg_weights", _text),
    "seg-size": ("seg_size", _num(int, 0)),
    "seg-every": ("seg_every", _seg_every),
    "score-threshold": ("score_threshold", _num(float, 0, 1)),
    "mask-threshold": ("mask_threshold", _num(float, 0, 1)),
    "classes": ("classes", _text),
    "device": ("device", _text),
    "precision": ("precision", _choice("auto", "fp32", "bf16", "fp16")),
    "max-detections": ("max_detections", _num(int, 1)),
    "batch": ("batch", _num(int, 1)),
    "no-caption": ("no_caption", _flag),
    "caption-model": ("caption_model", lambda v: Path(_text(v))),
    "caption-every": ("caption_every", _num(int, 1)),
    "caption-interval": ("caption_interval", _num(float, 0)),
    "beam": ("beam", _num(int, 1)),
    "no-track": ("no_track", _flag),
    "max-fps": ("max_fps", _num(float, 0, above=True)),
    "log-every": ("log_every", _num(int, 0)),
    "log-masks": ("log_masks", _flag),
    "stats-interval": ("stats_interval", _num(float, 0)),
    "on-stage-error": ("on_stage_error", _choice("skip", "stop")),
}
OPTIONS = {**SOURCE_OPTIONS, **ENGINE_OPTIONS}
RESOURCE_KEYS = ("num_cpus", "num_gpus", "resources", "max_restarts")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Camera:
    name: str
    url: str  # as given or read from the environment; credentials only ever shown redacted
    group: str
    options: dict[str, Any] = field(default_factory=dict)  # monitor's parameter names
    alerts: list[Any] = field(default_factory=list)

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


@dataclass
class Group:
    name: str
    cameras: list[Camera] = field(default_factory=list)
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)  # custom node labels
    max_restarts: int = -1  # Ray restarts a crashed actor this often (-1: always)

    @property
    def engine_options(self) -> dict[str, Any]:
        """The options every camera of the group shares (checked by ``load``)."""
        names = {param for param, _ in ENGINE_OPTIONS.values()}
        return {k: v for k, v in self.cameras[0].options.items() if k in names} if self.cameras else {}


@dataclass
class CameraConfig:
    cameras: list[Camera]
    groups: dict[str, Group]
    path: Path | None = None


def _options(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: options must be a mapping of option names to values")
    out = {}
    for key, value in raw.items():
        name = str(key).lstrip("-")
        if name not in OPTIONS:
            near = [n for n in OPTIONS if n.replace("-", "") == name.replace("_", "").replace("-", "")]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise BadInputError(f"{where}: unknown option {key!r}{hint}")
        param, check = OPTIONS[name]
        try:
            out[param] = check(value)
        except ValueError as err:
            raise BadInputError(f"{where}: {name} {err}") from None
    return out


def _url(where: str, cam: dict, env: dict[str, str]) -> str:
    has_url, has_env = "url" in cam, "url_env" in cam
    if has_url == has_env:
        raise BadInputError(f"{where}: give exactly one of url and url_env")
    if has_env:
        var = cam["url_env"]
        if not isinstance(var, str) or not var:
            raise BadInputError(f"{where}: url_env must name an environment variable")
        if not env.get(var):
            raise BadInputError(f"{where}: url_env: environment variable {var} is not set")
        return env[var].strip()
    url = cam["url"]
    if isinstance(url, int) and not isinstance(url, bool):
        url = str(url)  # a webcam index
    if not isinstance(url, str) or not url.strip():
        raise BadInputError(f"{where}: url must be a camera URL or webcam index")
    return url.strip()


def _group(name: str, raw: Any) -> Group:
    where = f"group {name!r}"
    if not isinstance(raw, dict):
        raise BadInputError(f"{where}: must be a mapping (num_cpus, num_gpus, resources, max_restarts)")
    for key in raw:
        if key not in RESOURCE_KEYS:
            raise BadInputError(f"{where}: unknown field {key!r} (allowed: {', '.join(RESOURCE_KEYS)})")
    group = Group(name)
    try:
        for key in ("num_cpus", "num_gpus"):
            if key in raw:
                setattr(group, key, _num(float, 0)(raw[key]))
        if "max_restarts" in raw:
            group.max_restarts = _num(int, -1)(raw["max_restarts"])
    except ValueError as err:
        raise BadInputError(f"{where}: {key} {err}") from None
    res = raw.get("resources") or {}
    if not isinstance(res, dict):
        raise BadInputError(f"{where}: resources must map resource names to amounts")
    for key, value in res.items():
        try:
            group.resources[str(key)] = _num(float, 0)(value)
        except ValueError as err:
            raise BadInputError(f"{where}: resources.{key} {err}") from None
    return group


def load(path: str | os.PathLike, env: dict[str, str] | None = None) -> CameraConfig:
    """Read and check a cameras.yaml; BadInputError (one line) on anything wrong."""
    try:
        import yaml
    except ImportError:
        raise BadInputError("--config needs PyYAML (pip install pyyaml)") from None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise BadInputError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise BadInputError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None
    return parse(doc, env=os.environ if env is None else env, path=path)


def parse(doc: Any, *, env: dict[str, str], path: Path | None = None) -> CameraConfig:
    if not isinstance(doc, dict):
        raise BadInputError("config: must be a mapping with a 'cameras' list")
    unknown = set(doc) - {"defaults", "groups", "cameras"}
    if unknown:
        raise BadInputError(f"config: unknown section {sorted(unknown)[0]!r} (allowed: defaults, groups, cameras)")
    defaults = _options("defaults", doc.get("defaults"))
    raw_groups = doc.get("groups") or {}
    if not isinstance(raw_groups, dict):
        raise BadInputError("groups: must map group names to resources")
    groups = {str(k): _group(str(k), v) for k, v in raw_groups.items()}
    raw_cams = doc.get("cameras")
    if not isinstance(raw_cams, list) or not raw_cams:
        raise BadInputError("config: 'cameras' must be a list with at least one camera")
    cameras: list[Camera] = []
    seen_names: set[str] = set()
    seen_urls: dict[str, str] = {}
    for i, cam in enumerate(raw_cams):
        if not isinstance(cam, dict):
            raise BadInputError(f"camera #{i + 1}: must be a mapping with name and url")
        name = cam.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadInputError(f"camera #{i + 1}: name must be 1-64 letters, digits, '.', '_' or '-' "
                                f"(starting with a letter or digit), got {name!r}")
        where = f"camera {name!r}"
        if name in seen_names:
            raise BadInputError(f"{where}: the name is used twice")
        seen_names.add(name)
        extra = set(cam) - {"name", "url", "url_env", "group", "options", "alerts"}
        if extra:
            raise BadInputError(f"{where}: unknown field {sorted(extra)[0]!r} "
                                "(allowed: name, url, url_env, group, options, alerts)")
        url = _url(where, cam, env)
        if url in seen_urls:
            raise BadInputError(f"{where}: url is the same as camera {seen_urls[url]!r}'s")
        seen_urls[url] = name
        group = cam.get("group", name)
        if not isinstance(group, str) or not NAME_RE.match(group):
            raise BadInputError(f"{where}: group must be a name like the camera names, got {group!r}")
        alerts = cam.get("alerts") or []
        if not isinstance(alerts, list):
            raise BadInputError(f"{where}: alerts must be a list of rules")
        options = {**defaults, **_options(where, cam.get("options"))}
        cameras.append(Camera(name=name, url=url, group=group, options=options, alerts=alerts))
        groups.setdefault(group, Group(group)).cameras.append(cameras[-1])
    for group in list(groups.values()):
        if not group.cameras:
            raise BadInputError(f"group {group.name!r}: no camera names it")
        _check_group_agrees(group)
    return CameraConfig(cameras=cameras, groups=groups, path=path)


def _check_group_agrees(group: Group) -> None:
    first = group.cameras[0]
    for cam in group.cameras[1:]:
        for cli_name, (param, _) in ENGINE_OPTIONS.items():
            if first.options.get(param) != cam.options.get(param):
                raise BadInputError(
                    f"camera {cam.name!r}: {cli_name} differs from camera {first.name!r} in group {group.name!r} "
                    "(a group runs one engine; put the camera in a group of its own)")


def groups_for_urls(urls: list[str]) -> CameraConfig:
    """Cameras given on the command line: each its own group, named by its redacted URL."""
    from streamcap.capture import default_source_name, source_kind

    cameras, groups = [], {}
    for i, url in enumerate(urls):
        name = default_source_name(url, source_kind(url))
        gname = f"cam{i + 1}"
        cam = Camera(name=name, url=url, group=gname)
        cameras.append(cam)
        groups[gname] = Group(gname, cameras=[cam])
    return CameraConfig(cameras=cameras, groups=groups)
