"""Caption search: the query language, `streamcap index` / `streamcap search`, and the index kept
while a real `file` run logs."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from conftest import SAMPLE_CLIP, read_jsonl, run_cli
from streamcap.cli.app import app
from streamcap.errors import BadInputError
from streamcap.search import SearchIndex, build_index, index_path_for, open_index, parse_since, to_fts_query
from streamcap.sinks import make_record, record_line


@pytest.mark.parametrize("text, query", [
    ("dog on sofa", '"dog" AND "sofa"'),  # words every caption has are left out...
    ("on the", '"on" AND "the"'),  # ...unless nothing else is given
    ("dog OR a cat", '("dog" OR "a") AND "cat"'),  # ...and never from OR or phrases
    ('"red car" parked', '"red car" AND "parked"'),
    ("cat OR dog garden", '("cat" OR "dog") AND "garden"'),
    ("dog -cat", '("dog") NOT "cat"'),
    ("skate*", '"skate"*'),
    ("dog's bed, (please) NEAR NOT", '"dog s" AND "bed" AND "please" AND "NEAR" AND "NOT"'),
    ('"on a sofa"', '"on a sofa"'),
    ("column:dog {x}", '"column dog" AND "x"'),
])
def test_plain_text_becomes_a_safe_fts_query(text, query):
    assert to_fts_query(text) == query


@pytest.mark.parametrize("text", ['"dog', "OR dog", "dog OR", "dog OR OR cat", "-dog", "...", ""])
def test_bad_search_text_is_bad_input(text):
    with pytest.raises(BadInputError):
        to_fts_query(text)


def test_since_durations():
    assert parse_since("90s") == 90 and parse_since("30m") == 1800 and parse_since("2h") == 7200
    assert parse_since("1h30m") == 5400 and parse_since("1d") == 86400 and parse_since("45") == 45
    for bad in ("yesterday", "2x", "-1h", "0", "h"):
        with pytest.raises(BadInputError):
            parse_since(bad)


def _hand_log(path, now):
    """Captions on two cameras over three hours, frame records with labels, an alert, and
    two malformed lines and a cut-off last line."""
    recs = [
        make_record("run", ts=now - 3 * 3600, command="monitor"),
        make_record("caption", source="cam1", ts=now - 3 * 3600, frame_index=10, raw="a dog on a sofa",
                    shown="a dog on a sofa", changed=True, snapshot="cam1-x/old.jpg"),
        make_record("caption", source="cam2", ts=now - 1800, frame_index=20, raw="dogs running on the grass",
                    shown="a dog on the grass", changed=True, snapshot="cam2-x/new.jpg"),
        make_record("frame", source="cam2", ts=now - 1700, frame_index=21,
                    detections={"count": 2, "counts": {"dog": 1, "person": 1}}),
        make_record("frame", source="cam2", ts=now - 1690, frame_index=22,
                    detections={"count": 2, "counts": {"dog": 1, "person": 1}}),
        make_record("caption", source="cam1", ts=now - 600, frame_index=30, raw="a cat on a bed",
                    shown="a cat on a bed", changed=True),
        make_record("alert", source="cam1", ts=now - 590, frame_index=31, rule="pets", label="cat",
                    message="cat seen on cam1", snapshot="cam1-x/alert.jpg"),
    ]
    lines = [record_line(r) for r in recs]
    lines.insert(2, "this is not json\n")
    lines.insert(4, '["a", "list"]\n')
    path.write_text("".join(lines) + '{"schema":2,"event":"caption","sho')
    return path


def test_index_then_search_with_camera_since_and_json(tmp_path):
    now = time.time()
    log = _hand_log(tmp_path / "cams.jsonl", now)
    runner = CliRunner()
    res = runner.invoke(app, ["index", str(log)])
    assert res.exit_code == 0, res.output
    assert "2 malformed lines skipped" in res.output and "7 records" in res.output
    index = index_path_for(log)
    assert index == tmp_path / "cams.index.sqlite" and index.is_file()

    def search(*args):
        r = runner.invoke(app, ["search", str(index), *args, "--json"])
        assert r.exit_code == 0, r.output
        return [json.loads(line) for line in r.stdout.splitlines()]

    got = search("dog")
    assert {(r["camera"], r["kind"]) for r in got} == {("cam1", "caption"), ("cam2", "caption"), ("cam2", "objects")}
    assert search("dog", "--camera", "cam2", "--order", "newest") == [
        {**got_one, "score": None} for got_one in sorted((r for r in got if r["camera"] == "cam2"),
                                                          key=lambda r: -r["t"])]
    recent = search("dog sofa", "--since", "2h")
    assert recent == []  # the sofa was three hours ago
    old = search("dog sofa")
    assert [(r["camera"], r["caption"], r["snapshot"], r["frame_index"]) for r in old] == [
        ("cam1", "a dog on a sofa", "cam1-x/old.jpg", 10)]
    # raw captions are searched too, and stemmed: "running" finds the raw "dogs running"
    assert [r["raw"] for r in search("running")] == ["dogs running on the grass"]
    assert [r["caption"] for r in search("person", "--kind", "objects")] == ["dog person"]
    alert = search("cat", "--kind", "alert")
    assert [(r["caption"], r["snapshot"]) for r in alert] == [("cat seen on cam1", "cam1-x/alert.jpg")]
    assert len(search("cat", "--since", "15m")) == 2
    table = runner.invoke(app, ["search", str(index), "sofa"])
    assert table.exit_code == 0 and "sofa" in table.stdout and "cam1" in table.stdout


def test_search_errors_are_one_line_exit_2(tmp_path):
    log = _hand_log(tmp_path / "cams.jsonl", time.time())
    for args in (["search", str(log), '"dog'], ["search", str(log), "dog", "--since", "soon"],
                 ["search", str(log), "dog", "--order", "worst"], ["search", str(tmp_path / "nope.jsonl"), "dog"],
                 ["index", str(tmp_path / "nope.jsonl")], ["search", str(tmp_path), "dog"]):
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip().startswith("streamcap: error:") and len(res.stderr.strip().splitlines()) == 1


def test_search_on_a_log_builds_then_updates_its_index(tmp_path):
    now = time.time()
    log = _hand_log(tmp_path / "cams.jsonl", now)
    with open_index(log) as idx:
        assert [r["caption"] for r in idx.search("cat", kinds=("caption",))] == ["a cat on a bed"]
    # complete the cut-off line and append: the next search reads only what is new
    with open(log, "a") as fh:
        fh.write('wn":"x"}\n' + record_line(make_record("caption", source="cam3", ts=now, frame_index=1,
                                                         raw="a horse in a field", shown="a horse in a field",
                                                         changed=True)))
    with open_index(log) as idx:
        assert [r["camera"] for r in idx.search("horse")] == ["cam3"]
        # 5 before (the second frame record shows the same labels: no row) + the new caption
        assert idx.count() == 6
    rebuilt = build_index(log)
    # the completed line is JSON but has no time: skipped, with the two malformed lines
    assert rebuilt["records"] == 9 and rebuilt["skipped"] == 3


def test_api_search_best_and_newest(tmp_path):
    now = time.time()
    log = tmp_path / "many.jsonl"
    texts = ["a dog", "a dog and a dog on a dog bed", "a cat", "a dog in the snow"] + ["a bird in a tree"] * 8
    log.write_text("".join(record_line(make_record("caption", source="c", ts=now - 100 + i, frame_index=i, raw=t,
                                                   shown=t, changed=True)) for i, t in enumerate(texts)))
    build_index(log)
    with SearchIndex(index_path_for(log)) as idx:
        assert [r["frame_index"] for r in idx.search("dog", order="newest")] == [3, 1, 0]
        best = idx.search("dog", order="best")
        assert best[0]["frame_index"] == 1 and best[0]["score"] > best[-1]["score"]
        assert [r["frame_index"] for r in idx.search("dog", limit=1, order="newest")] == [3]
        with pytest.raises(BadInputError):
            idx.search("dog", order="random")


def test_index_kept_while_a_real_file_run_logs(tmp_path):
    """The bundled caption model on the sample clip, no segmenter: while the run is still going,
    the index (committed by its own thread) already finds the first caption that was logged."""
    from streamcap.runner import run
    from streamcap.search.index import index_path_for as ipf

    log = tmp_path / "run.jsonl"
    first: dict = {}
    found: list = []

    def on_record(record):
        if record["event"] == "caption" and not first:
            first.update(record)

    def on_result(result):
        # the writer thread, mid-run (frame 40 of 80): wait for the index thread's commit
        if result.frame.index != 40 or not first:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not found:
            if ipf(log).exists():
                with SearchIndex(ipf(log)) as idx:
                    found.extend(r for r in idx.search(first["shown"], order="newest", limit=50)
                                 if r["frame_index"] == first["frame_index"])
            time.sleep(0.2)

    summary = run(str(SAMPLE_CLIP), log=log, segment=False, caption={"every": 20}, on_record=on_record,
                  on_result=on_result)
    assert summary.exit_code == 0 and first
    assert found and found[0]["caption"] == first["shown"] and found[0]["camera"] == "vtest_8s.mp4"
    # after the run: every caption of the log is in the index
    captions = [r for r in read_jsonl(log) if r["event"] == "caption"]
    with SearchIndex(ipf(log)) as idx:
        assert idx.count() == len(captions) == 4


def test_cli_file_run_then_search_finds_its_caption(tmp_path):
    log = tmp_path / "run.jsonl"
    events = tmp_path / "ev"
    res = run_cli("file", str(SAMPLE_CLIP), "--no-segment", "--caption-every", "40", "--log", str(log),
                  "--events-dir", str(events), "--stride", "2", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "search index:" in res.stderr and "snapshots written" in res.stderr
    caption = next(r for r in read_jsonl(log) if r["event"] == "caption")
    word = max(caption["shown"].split(), key=len)
    out = run_cli("search", str(index_path_for(log)), word, "--json")
    assert out.returncode == 0, out.stderr
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert any(h["frame_index"] == caption["frame_index"] and h["snapshot"] == caption["snapshot"] for h in hits)
    assert (events / caption["snapshot"]).is_file()


def _set_writer(index, pid):
    import sqlite3

    conn = sqlite3.connect(str(index))
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('writer_pid', ?)", (str(pid),))
    conn.commit()
    conn.close()


def test_an_index_a_running_process_keeps_is_left_to_it_and_a_crashed_one_rebuilt(tmp_path):
    import os
    import subprocess
    import sys

    log = _hand_log(tmp_path / "cams.jsonl", time.time())
    index = build_index(log)["index"]
    _set_writer(index, os.getppid())  # alive, and not this process: a run keeping the index
    with pytest.raises(BadInputError, match="running streamcap"):
        build_index(log)
    with open(log, "a") as fh:
        fh.write('wn":"x"}\n')
    with open_index(log) as idx:  # searched as it is: the running process indexes what is new
        assert idx.count() == 5
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _set_writer(index, int(dead.stdout))  # a run that died while keeping it: rebuilt, no duplicates
    with open_index(log) as idx:
        assert idx.count() == 5 and len(idx.search("cat", kinds=("caption",))) == 1
