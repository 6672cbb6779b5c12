"""``streamcap bench-search``: index N caption records from a JSONL log and time searches at that size.

The log is written first (not timed): ``N`` caption records over four cameras, one every
half second of made-up time ending now, each a sentence from a fixed grammar (a seeded random
subject, action and place from ~40 choices each, as scene captions are). Then it times what
``streamcap index`` does (read, parse, rebuild the index), and a set of searches, each run
``repeat`` times: the median and the slowest are reported.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

SUBJECTS = ("a man", "a woman", "a dog", "two dogs", "a cat", "a child", "a group of people", "a person",
            "a boy", "a girl", "a black dog", "a white cat", "a brown dog", "two people", "a cyclist",
            "a man in a red shirt", "a woman in a blue dress", "a police officer", "a delivery driver",
            "a bird", "a horse", "two horses", "a car", "a red car", "a bus", "a truck", "a bicycle",
            "a motorcycle", "a van", "a couple", "an old man", "a young woman", "a baby", "a crowd",
            "a jogger", "a skateboarder", "a postman", "a teenager", "a family", "a puppy")
ACTIONS = ("is sitting", "is standing", "is walking", "is running", "is lying", "is playing", "is jumping",
           "is sleeping", "is eating", "is waiting", "is riding", "is parked", "is driving", "is crossing",
           "is looking", "is talking", "is climbing", "is reading", "are sitting", "are walking",
           "are standing", "are playing", "is resting", "is carrying a bag", "is holding a ball",
           "is pushing a stroller", "is opening a door", "is leaving", "is arriving", "is turning",
           "is stopped", "is moving", "is barking", "is chasing a ball", "is stretching", "is dancing",
           "is cleaning", "is working", "is smoking", "is laughing")
PLACES = ("on a sofa", "on the couch", "on the grass", "in the street", "on a sidewalk", "in a park",
          "near the door", "in the kitchen", "in the living room", "in a garden", "on a bench", "on the road",
          "in the driveway", "in a parking lot", "by the window", "on the stairs", "in the snow", "on a bed",
          "near a fence", "in front of a house", "on the porch", "in the yard", "at the gate",
          "under a tree", "on a beach", "in the water", "in a field", "on a bridge", "in a shop",
          "at a crosswalk", "near a bus stop", "in the hallway", "on the floor", "by the pool",
          "in the garage", "near a car", "on a path", "in the rain", "at night", "in the office")
CAMERAS = ("front-door", "garden", "garage", "living-room")
QUERIES = (("phrase", '"on a sofa"', "best"), ("three words", "dog on sofa", "best"),
           ("three words, newest", "dog on sofa", "newest"), ("one word", "bicycle", "best"),
           ("common word", "man", "best"), ("common word, newest", "man", "newest"),
           ("prefix", "skate*", "best"), ("OR + camera", "cat OR dog --camera garden", "best"),
           ("since 1h", "horse --since 1h", "best"))


def write_log(path: Path, n: int, seed: int = 0) -> float:
    """N caption records, half a second apart, ending now; returns the seconds it took."""
    from streamcap.sinks import iso_time

    rng = random.Random(seed)
    t0 = time.perf_counter()
    end = time.time()
    with open(path, "w", encoding="utf-8") as fh:
        lines = []
        for i in range(n):
            camera = CAMERAS[i % len(CAMERAS)]
            shown = f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}"
            raw = shown if rng.random() < 0.7 else f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}"
            record = {"schema": 2, "event": "caption", "time": iso_time(end - (n - i) * 0.5), "source": camera,
                      "frame_index": i // len(CAMERAS) * 10, "pts_s": round(i * 0.5, 3), "raw": raw, "shown": shown,
                      "score": round(-rng.random() * 3, 4), "changed": rng.random() < 0.2}
            lines.append(json.dumps(record, separators=(",", ":")))
            if len(lines) >= 10000:
                fh.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            fh.write("\n".join(lines) + "\n")
    return time.perf_counter() - t0


def run_bench(n: int, folder: Path, repeat: int = 5) -> dict:
    from streamcap.search import SearchIndex, build_index, parse_since

    log = folder / "bench.jsonl"
    write_s = write_log(log, n)
    stats = build_index(log)
    results = {"records": n, "log_mb": round(log.stat().st_size / 1e6, 1), "write_log_s": round(write_s, 2),
               "index_s": stats["seconds"], "records_per_s": round(n / stats["seconds"]),
               "index_mb": round(Path(stats["index"]).stat().st_size / 1e6, 1), "queries": []}
    with SearchIndex(stats["index"]) as idx:
        for name, q, order in QUERIES:
            text, camera, since = q, None, None
            if " --camera " in text:
                text, camera = text.split(" --camera ")
            if " --since " in text:
                text, since = text.split(" --since ")
            times, hits = [], 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                hits = len(idx.search(text, camera=camera, since_s=parse_since(since), limit=50, order=order))
                times.append((time.perf_counter() - t0) * 1000)
            results["queries"].append({"name": name, "query": q, "order": order, "hits": hits,
                                       "median_ms": round(statistics.median(times), 1),
                                       "max_ms": round(max(times), 1)})
    return results


def bench_search(
    records: Annotated[int, typer.Option("--records", "-n", min=1, help="Caption records to index.")] = 1_000_000,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Runs of each query.")] = 5,
    folder: Annotated[Optional[Path], typer.Option("--dir", help="Keep the log and index here (default: a temporary folder).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as one JSON object.")] = False,
) -> None:
    """Benchmark the search index: build it from N caption records, then time searches.

    Targets (issue 12): 1 million records indexed in under a minute, a search in under 100 ms.
    """
    from rich.console import Console
    from rich.table import Table

    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        res = run_bench(records, folder, repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="streamcap-bench-search-") as tmp:
            res = run_bench(records, Path(tmp), repeat)
    if as_json:
        print(json.dumps(res))
        return
    console = Console()
    console.print(f"{res['records']:,} caption records ({res['log_mb']} MB of JSONL) indexed in "
                  f"{res['index_s']:.1f} s ({res['records_per_s']:,} records/s); index {res['index_mb']} MB",
                  highlight=False)
    table = Table("query", "search", "order", "hits (limit 50)", "median ms", "max ms")
    for q in res["queries"]:
        table.add_row(q["name"], q["query"], q["order"], str(q["hits"]), f"{q['median_ms']:.1f}", f"{q['max_ms']:.1f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench-search")(bench_search)
