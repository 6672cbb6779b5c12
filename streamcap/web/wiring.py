"""Glue between the CLI and the web package: the dashboard of a ``monitor`` run, and search
over the index beside a log."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from streamcap.web.history import History
from streamcap.web.live import DEFAULT_WIDTH, LiveHub
from streamcap.web.server import WebApp


class LazySearch:
    """``(text, camera, since_s, limit, order) -> rows`` over a search index that a running
    monitor may not have created yet; rows get the URL of their snapshot."""

    def __init__(self, index_path: Path, history: History) -> None:
        self.index_path = Path(index_path)
        self.history = history
        self._index = None
        self._lock = threading.Lock()

    def __call__(self, text: str, camera: str | None, since_s: float | None, limit: int, order: str) -> list[dict]:
        from streamcap.search import SearchIndex

        with self._lock:
            if self._index is None:
                if not self.index_path.is_file():
                    raise LookupError("the search index has no entries yet")
                self._index = SearchIndex(self.index_path)
        rows = self._index.search(text, camera=camera, since_s=since_s, limit=limit, order=order)
        return [{"time": r["time"], "camera": r["camera"], "kind": r["kind"], "text": r["caption"],
                 "score": r.get("score"), "snapshot": self.history.snapshot_url(r.get("snapshot"))}
                for r in rows]


def open_search(log: Path | None, events_dir: Path | None, history: History) -> Callable | None:
    """Search over the index of ``log``, built or brought up to date from the log first."""
    if log is None:
        return None
    from streamcap.search import index_path_for, open_index

    open_index(log)  # builds the index, or catches up with what the log gained
    return LazySearch(index_path_for(log), history)


def public_address(server: Any) -> str:
    """The server's address for others: a wildcard bind (0.0.0.0, ::) is named by this machine's
    host name."""
    host = server.host
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.getfqdn()
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}/"


class Dashboard:
    """The web server of a ``monitor`` run, fed by the run's record tap."""

    def __init__(self, tap: Any, sources: list, bind: str, token: str | None, token_file: Path | None,
                 log: Path | None, events_dir: Path | None, index: bool = True, fps: float = 5.0,
                 width: int = DEFAULT_WIDTH) -> None:
        from streamcap.cli.serve import start_server
        from streamcap.metrics import Metrics

        names = [s.resolved().name for s in sources]
        self.hub = LiveHub(names, max_fps=fps, max_width=width)
        history = History(events_dir=events_dir)
        self.metrics = Metrics()
        search = None
        if log is None and events_dir is not None:
            log = Path(events_dir) / "events.jsonl"
        if log is not None and index:
            from streamcap.search import index_path_for

            search = LazySearch(index_path_for(log), history)
        self.app = WebApp(hub=self.hub, history=history, search=search, metrics=self.metrics.text,
                          events_dir=Path(events_dir) if events_dir is not None else None, max_view_fps=fps)
        tap.subscribe(self.app.on_record)
        tap.subscribe(self.metrics.on_record)
        tap.subscribe_frames(self.hub)
        self.server = start_server(self.app, bind, token, token_file)
        notifier = getattr(tap, "notifier", None)
        if notifier is not None:  # webhooks link alert snapshots here (unless --public-url said where)
            notifier.set_public_url(public_address(self.server))

    def close(self) -> None:
        self.server.close()


def start_dashboard(tap: Any, serve: str | None, token: str | None, token_file: Path | None, sources: list,
                    log: Path | None, events_dir: Path | None, index: bool = True,
                    fps: float = 5.0, width: int = DEFAULT_WIDTH) -> Dashboard | None:
    """With ``--serve``: the dashboard on the run's tap (started before the cameras, so a bad
    address or a missing token stops the command before anything runs); else None."""
    if serve is None:
        if token or token_file:
            from streamcap.errors import BadInputError

            raise BadInputError("--auth-token and --auth-token-file go with --serve")
        return None
    return Dashboard(tap, sources, serve, token, token_file, log, events_dir, index, fps, width)
