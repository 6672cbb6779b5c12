"""Per-source figures in ``stats`` records (``sources``: name -> input/processed fps and counts)."""

from __future__ import annotations

import queue
from types import SimpleNamespace

from conftest import SlowStage, read_jsonl, write_video
from streamcap.capture import SourceConfig
from streamcap.errors import EXIT_OK
from streamcap.pipeline import Pipeline, PipelineConfig, Stats
from streamcap.sinks import JsonlSink


def _reader(name: str, frames: int, dropped: int = 0) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(name=name), frames_read=frames, dropped=dropped, errors=0,
                           queue=queue.Queue())


def test_snapshot_splits_the_counts_by_source():
    a, b = _reader("a", 0), _reader("b", 0)
    stats = Stats([a, b], queue.Queue())
    a.frames_read, b.frames_read, b.dropped = 6, 0, 2
    stats.add_processed(1, "a")
    stats.add_processed(1, "a")
    stats.add_processed(1, "a")
    stats.add_written(40.0, "a")
    stats.add_capped("b")
    snap = stats.snapshot()
    assert snap["processed"] == 3 and snap["frames_in"] == 6 and snap["dropped"] == 3
    assert "sources" not in snap  # the HUD and --stats table keep their lines
    sa, sb = stats.sources["a"], stats.sources["b"]
    assert (sa["frames_in"], sa["processed"], sa["written"], sa["dropped"], sa["latency_ms"]) == (6, 3, 1, 0, 40.0)
    assert (sb["frames_in"], sb["processed"], sb["written"], sb["dropped"], sb["latency_ms"]) == (0, 0, 0, 3, None)
    assert sa["input_fps"] > 0 and sa["processed_fps"] > 0
    assert sb["input_fps"] == 0 and sb["processed_fps"] == 0
    # Rates are over the time since the previous snapshot: nothing new, nothing per second.
    stats.snapshot()
    assert stats.sources["a"]["input_fps"] == 0 and stats.sources["a"]["frames_in"] == 6


def test_stats_records_carry_each_source(tmp_path):
    long, short = write_video(tmp_path / "long.avi", n=30), write_video(tmp_path / "short.avi", n=8)
    log = tmp_path / "log.jsonl"
    with JsonlSink(log) as sink:
        p = Pipeline([SourceConfig(str(long)), SourceConfig(str(short))], SlowStage(delay_s=0.02),
                     log_sink=sink, config=PipelineConfig(stats_interval_s=0.1))
        summary = p.run()
    assert summary.exit_code == EXIT_OK
    stats = [r for r in read_jsonl(log) if r["event"] == "stats"]
    assert stats, "a stats record every 0.1 s of a run over 0.7 s"
    names = {p.readers[0].cfg.name, p.readers[1].cfg.name}
    for rec in stats:
        assert set(rec["sources"]) == names
        assert sum(s["frames_in"] for s in rec["sources"].values()) == rec["frames_in"]
        assert sum(s["processed"] for s in rec["sources"].values()) == rec["processed"]
        for s in rec["sources"].values():
            assert {"input_fps", "processed_fps", "dropped", "latency_ms", "written"} <= set(s)
    last = stats[-1]["sources"]
    assert last[p.readers[1].cfg.name]["processed"] <= 8
    assert last[p.readers[0].cfg.name]["processed"] <= 30
