"""Files a route may serve: only regular files inside one folder, whatever the request says."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

SERVED_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4",
                ".webm": "video/webm"}


def safe_file(root: Path | None, requested: str) -> Path | None:
    """The file ``requested`` (a URL path below the route, still %-encoded) names inside
    ``root``, or None: absolute paths, ``..`` (also encoded), NUL bytes, symlinks that lead
    outside, folders and file types not served are all refused."""
    if root is None:
        return None
    rel = unquote(requested)
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or os.path.isabs(rel):
        return None
    if any(part in ("..", "") for part in rel.split("/")):
        return None
    base = Path(root).resolve()
    try:
        path = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    if path.suffix.lower() not in SERVED_TYPES:
        return None
    return path
