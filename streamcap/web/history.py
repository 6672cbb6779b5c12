"""The history the dashboard shows: per camera, shown-caption changes and alerts, newest first.

Fed either record by record (the record tap, while ``monitor`` runs) or by following a JSONL log
(``streamcap serve --log``): complete lines only, from where the last read stopped.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

from streamcap.capture import redact_url


class History:
    def __init__(self, log: Path | None = None, events_dir: Path | None = None, per_camera: int = 500) -> None:
        self.log = Path(log) if log is not None else None
        self.events_dir = Path(events_dir).resolve() if events_dir is not None else None
        self.per_camera = per_camera
        self._entries: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._offset = 0
        self._ino = None

    def cameras(self) -> list[str]:
        self.refresh()
        with self._lock:
            return list(self._entries)

    def add(self, record: dict[str, Any]) -> None:
        """Keep a record if it belongs on the timeline (a shown-caption change or an alert)."""
        event = record.get("event")
        source = record.get("source")
        if source is None:
            return
        if event == "caption" and record.get("changed") and record.get("shown"):
            entry = {"kind": "caption", "text": record["shown"]}
        elif event == "alert":
            entry = {"kind": "alert", "text": alert_text(record), "rule": record.get("rule")}
        elif event == "source_status":
            with self._lock:
                self._entries.setdefault(redact_url(str(source)), deque(maxlen=self.per_camera))
            return
        else:
            return
        entry.update(time=record.get("time"), camera=redact_url(str(source)),
                     snapshot=self.snapshot_url(record.get("snapshot")))
        with self._lock:
            self._entries.setdefault(entry["camera"], deque(maxlen=self.per_camera)).append(entry)

    def snapshot_url(self, snapshot: Any) -> str | None:
        """The URL a record's ``snapshot`` (a path in the events dir) is served at, else None."""
        if not snapshot or self.events_dir is None:
            return None
        path = Path(str(snapshot))
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(self.events_dir)
            except ValueError:
                return None
        from urllib.parse import quote

        return "/events/" + quote(path.as_posix())

    def refresh(self) -> None:
        """Read what the log gained since the last call (a log replaced or cut is read anew)."""
        if self.log is None:
            return
        with self._lock:
            try:
                with open(self.log, "rb") as f:
                    st = Path(self.log).stat()
                    if st.st_ino != self._ino or st.st_size < self._offset:
                        self._ino, self._offset = st.st_ino, 0
                        self._entries.clear()
                    f.seek(self._offset)
                    data = f.read()
            except OSError:
                return
            end = data.rfind(b"\n") + 1  # complete lines only
            self._offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.add(record)

    def timeline(self, camera: str | None = None, limit: int = 50) -> list[dict]:
        self.refresh()
        with self._lock:
            if camera is not None:
                items = list(self._entries.get(camera, ()))
            else:
                items = [e for d in self._entries.values() for e in d]
        items.sort(key=lambda e: e.get("time") or "", reverse=True)
        return items[:max(1, limit)]


def alert_text(record: dict) -> str:
    """One line for an alert record: the rule, then what it saw (objects or caption)."""
    parts = [str(record.get("rule") or "alert")]
    objects = record.get("objects")
    if isinstance(objects, list) and objects:
        parts.append(", ".join(sorted({str(o.get("label")) for o in objects if isinstance(o, dict)})))
    for key in ("caption", "message"):
        if record.get(key):
            parts.append(str(record[key]))
    return ": ".join(parts)
