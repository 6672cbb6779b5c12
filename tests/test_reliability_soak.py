"""Soak: monitor's engine on two looping RTSP cameras with a fast fake model, checking memory,
threads, descriptors, queues and the log. One minute here (part of the default run); the long
run is ``streamcap soak --minutes 30 --out DIR`` or STREAMCAP_SOAK_MINUTES=30 with -m soak."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, need_tool


def _soak(tmp_path, minutes: float) -> dict:
    need_tool("rtsp-server-perl")
    need_tool("ffmpeg")
    out = tmp_path / "soak"
    result = subprocess.run([sys.executable, "-m", "streamcap.soak", "soak", "--minutes", str(minutes),
                             "--out", str(out), "--json", "--sample-every", "1" if minutes <= 2 else "5"],
                            cwd=REPO, capture_output=True, text=True, timeout=minutes * 60 + 120)
    verdict = json.loads(result.stdout.strip().splitlines()[-1])
    failed = [k for k, ok in verdict["checks"].items() if not ok]
    assert result.returncode == (0 if verdict["pass"] else 1)
    assert verdict["pass"], f"failed checks: {failed}\n{json.dumps(verdict, indent=1)}"
    rows = list(csv.DictReader(open(out / "soak.csv")))
    assert len(rows) == verdict["samples"] and {"rss_mib", "threads", "fds", "result_queue"} <= set(rows[0])
    assert (out / "soak.png").stat().st_size > 1000
    assert json.loads((out / "soak.json").read_text())["pass"] is True
    return verdict


@pytest.mark.slow
def test_soak_one_minute(tmp_path):
    v = _soak(tmp_path, 1.0)
    assert v["rss_growth_pct"] < 5.0 and v["threads_end"] <= v["threads_after_warmup"]
    assert v["fds_end"] <= v["fds_after_warmup"]
    assert all(n > 100 for n in v["frames_per_camera"].values())  # ~10 fps each for a minute
    assert v["stats_records"] >= v["stats_expected"] - 1 and v["bad_log_lines"] == 0


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("STREAMCAP_SOAK_MINUTES"), reason="set STREAMCAP_SOAK_MINUTES to run")
def test_soak_long(tmp_path):
    _soak(tmp_path, float(os.environ["STREAMCAP_SOAK_MINUTES"]))
