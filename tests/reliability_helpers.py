"""Helpers for the reliability tests: run the CLI as a child process, follow its JSONL log
while it runs, sample its memory, and check what it left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO

ENGINE_ONLY = ["--no-segment", "--no-caption"]
# Short network timeouts so that each outage costs seconds, not minutes.
FAST_NET = ["--rtsp-transport", "udp", "--read-timeout", "2", "--open-timeout", "3", "--watchdog", "4"]


class Child:
    """``python -m streamcap ARGS`` with stdout/stderr in files (a pipe could fill and block)."""

    def __init__(self, tmp_path: Path, *args: str, name: str = "child", preexec_fn=None,
                 env: dict | None = None) -> None:
        self.out_path = tmp_path / f"{name}.stdout"
        self.err_path = tmp_path / f"{name}.stderr"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamcap", *args], cwd=REPO, stdout=self._out, stderr=self._err,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=preexec_fn)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"streamcap did not exit within {timeout} s; stderr:\n{self.stderr[-3000:]}")
        finally:
            self._out.close()
            self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def follow(log: Path) -> list[dict]:
    """The complete records of a log being written (a line still being written is skipped)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def wait_for(what: str, predicate: Callable[[], bool], child: Child | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if child is not None and child.proc.poll() is not None:
            pytest.fail(f"streamcap exited ({child.proc.returncode}) while waiting for {what}:\n{child.stderr[-3000:]}")
        time.sleep(0.2)
    if child is not None:
        child.kill()
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def statuses(records: list[dict], source: str | None = None) -> list[str]:
    return [r["status"] for r in records if r["event"] == "source_status"
            and (source is None or r["source"] == source)]


def frames(records: list[dict], source: str | None = None) -> list[dict]:
    return [r for r in records if r["event"] == "frame" and (source is None or r["source"] == source)]


def count_status(log: Path, status: str, source: str | None = None) -> int:
    return statuses(follow(log), source).count(status)


class RssSampler(threading.Thread):
    """Samples a child's resident memory (MiB) every ``every`` seconds while it runs."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.every = every
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.process.memory_info().rss / 2**20)
            except Exception:
                return
            self._halt.wait(self.every)

    def stop(self) -> list[float]:
        self._halt.set()
        self.join(timeout=5)
        return self.samples


def check_complete_log(log: Path) -> list[dict]:
    """Every line of the log parses and ends with a newline."""
    data = log.read_bytes()
    assert data.endswith(b"\n"), "the log's last line is cut"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]
