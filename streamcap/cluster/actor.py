"""One camera group inside a Ray actor: the same engine as ``monitor`` (``run_job``), writing
the node's own JSONL log, from which the driver pulls lines by sequence number.

The local log is the source of truth: a line's sequence number is its line number in that
file (1-based). The driver asks for the lines after the last one it wrote, so a driver that
was cut off catches up from the file, and a restarted actor on the same node (same file)
continues the numbering: nothing is sent twice and nothing is skipped.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from streamcap.errors import StreamcapError
from streamcap.cluster.outbox import LiveFrames, SnapshotOutbox
from streamcap.runner import StopHandle


def local_log_path(local_dir: str | os.PathLike, group: str, node_id: str) -> Path:
    return Path(local_dir) / f"{group}.{node_id[:12]}.jsonl"


def read_lines(path: Path, since: int, limit: int, cursor: tuple[int, int] | None = None) -> tuple[list[str], tuple[int, int]]:
    """Complete lines number since+1 .. since+limit of ``path`` and the (seq, offset) after them.
    ``cursor`` (the seq and byte offset where an earlier read stopped) saves rescanning."""
    seq, offset = cursor if cursor is not None and cursor[0] <= since else (0, 0)
    lines: list[str] = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while len(lines) < limit:
                raw = f.readline()
                if not raw.endswith(b"\n"):  # nothing more, or a line still being written
                    break
                offset += len(raw)
                seq += 1
                if seq > since:
                    lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
    except FileNotFoundError:
        pass
    return lines, (seq, offset)


class CameraGroup:
    """Runs one group's Job on this node. Ray wraps it with ``ray.remote`` (see ``driver``);
    a restart by Ray runs ``__init__`` again, which starts the engine again (cameras reconnect)."""

    def __init__(self, group: str, job: Any, local_dir: str, stage_factory: Callable | None = None,
                 view: dict[str, Any] | None = None) -> None:
        """``view``: ``rules`` (alert rules run here), ``events_dir``/``events_max_mb`` (snapshots
        named for the driver's events folder and sent to it), ``live`` (the driver serves a
        dashboard: frames of watched cameras are sent)."""
        import ray

        ctx = ray.get_runtime_context()
        self.group = group
        self.node_id = ctx.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.started = time.time()
        self.path = local_log_path(local_dir, group, self.node_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        job.log = self.path
        self.job = job
        self._fresh = threading.Event()  # set by every record the engine writes (and live frames)
        self._stage_factory = stage_factory
        self.view = dict(view or {})
        self.tap = self._make_tap()
        self._cursor: tuple[int, int] | None = None
        self._stop = StopHandle()
        self.done = threading.Event()
        self.exit_code: int | None = None
        self.error: str | None = None
        threading.Thread(target=self._run, name=f"group-{group}", daemon=True).start()

    def _make_tap(self):
        from streamcap.tap import RecordTap

        tap = RecordTap()
        tap.subscribe(lambda _record: self._fresh.set())
        names = [s.resolved().name for s in self.job.sources]
        if self.view.get("rules"):
            from streamcap.alerts.service import Notifier

            Notifier(self.view["rules"], cameras=names).attach(tap)
        self.snapshots = self.frames = None
        if self.view.get("events_dir") is not None:
            self.snapshots = SnapshotOutbox(self.view["events_dir"], self.view.get("events_max_mb") or 500.0,
                                            spool=self.path.with_suffix(".snapshots"))
            tap.events = self.snapshots
            tap.add_enricher(self.snapshots.enrich)
        if self.view.get("live"):
            self.frames = LiveFrames()
            self.frames.on_put = lambda: self._fresh.set()
            tap.subscribe_frames(self.frames)
        return tap

    def _run(self) -> None:
        from rich.console import Console

        from streamcap import runner

        try:
            stage = self._stage_factory() if self._stage_factory is not None else None
            summary = runner.run_job(self.job, console=Console(stderr=True, quiet=True), install_signals=False,
                                     stage=stage, tap=self.tap, stop=self._stop)
            self.exit_code, self.error = summary.exit_code, summary.error
        except StreamcapError as err:
            self.exit_code, self.error = err.exit_code, str(err)
        except BaseException as err:  # reported to the driver, never lost in the thread
            self.exit_code, self.error = 1, f"{type(err).__name__}: {err}"
        finally:
            self.done.set()
            self._fresh.set()

    # -- called by the driver ------------------------------------------------------------------
    def fetch(self, since: dict[str, int], limit: int = 2000, wait_s: float = 0.5,
              linger_s: float = 0.0, acked: list[str] | None = None) -> dict[str, Any]:
        """This incarnation's identity and the local log's lines after ``since[path]``. Waits up
        to ``wait_s`` for a first new line (the engine's record tap wakes it: the line is in the
        file before subscribers hear of it), then ``linger_s`` more so that one answer carries
        several records (fewer calls, at that much latency). ``acked``: the snapshots the driver
        has (None: all it was sent); the others sent before go out again."""
        if self.snapshots is not None:
            self.snapshots.ack(acked)
        key = str(self.path)
        start = int(since.get(key, 0))
        self._fresh.clear()
        lines, self._cursor = read_lines(self.path, start, limit, self._cursor)
        if not lines and not self.done.is_set() and not self._extras_pending() and self._fresh.wait(wait_s):
            if linger_s > 0:
                self.done.wait(linger_s)
            lines, self._cursor = read_lines(self.path, start, limit, self._cursor)
        return {**self._extras(), "node_id": self.node_id, "node_ip": self.node_ip, "path": key, "first_seq": start + 1,
                "lines": lines, "done": self.done.is_set() and len(lines) < limit, "exit_code": self.exit_code,
                "error": self.error, "restarted": self.restarted, "started": self.started}

    def _extras_pending(self) -> bool:
        return (self.frames is not None and self.frames.pending) or bool(self.snapshots is not None and self.snapshots._queue)

    def _extras(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.frames is not None:
            out["frames"] = self.frames.take()
        if self.snapshots is not None:
            out["snapshots"] = self.snapshots.take()
            out["snapshots_dropped"] = self.snapshots.dropped
        return out

    def watch(self, cameras: list[str], fps: float) -> None:
        """The driver's viewers: send frames of these cameras, at most ``fps`` a second each."""
        if self.frames is not None:
            self.frames.watch(cameras, fps)

    def stop(self, reason: str = "sigint", timeout_s: float = 20.0) -> bool:
        """End the run as a signal would (the log ends with ``end``); True when it ended."""
        self._stop.stop(reason)
        return self.done.wait(timeout_s)

    def pid(self) -> int:
        return os.getpid()
