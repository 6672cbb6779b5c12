"""streamcap bench-segmenter: one JSON row per setting, bad settings are one line and exit 2."""

from __future__ import annotations

import json

from conftest import run_cli


def test_rows_cover_the_matrix_with_their_figures():
    r = run_cli("bench-segmenter", "--device", "cpu", "--sizes", "96x64,128x96", "--seg-sizes", "64",
                "--precisions", "fp32,bf16", "--batches", "1", "--max-detections", "3", "--frames", "2",
                "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(x["size"], x["precision"]) for x in rows] == [
        ("96x64", "fp32"), ("96x64", "bf16"), ("128x96", "fp32"), ("128x96", "bf16")]
    for x in rows:
        assert x["seg_size"] == 64 and x["batch"] == 1 and x["max_det"] == 3
        assert x["fps_min"] <= x["fps"] <= x["fps_max"] and x["fps"] > 0
        assert x["detections_per_frame"] <= 3 and x["peak_gpu_gib"] is None
        assert {"ms_preprocess", "ms_model", "ms_paste"} <= set(x)


def test_bad_settings_are_one_line_and_exit_2():
    for args in (["--sizes", "10x10"], ["--sizes", "huge"], ["--precisions", "int8"], ["--batches", "0"]):
        r = run_cli("bench-segmenter", "--device", "cpu", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert "error" in r.stderr and "Traceback" not in r.stderr
