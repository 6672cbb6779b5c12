from __future__ import annotations

import numpy as np

from conftest import SlowStage, frame_level, probe_frames, read_jsonl, write_video
from streamcap.runner import run


class CountingCaptioner:
    name = "counting"

    def __call__(self, frame):
        return (f"frame {frame.index}", -0.5)


def test_run_from_python_with_callbacks(tmp_path):
    src = write_video(tmp_path / "in.avi", n=12)
    out, log = tmp_path / "out.mp4", tmp_path / "log.jsonl"
    results, images = [], []
    summary = run(str(src), out=out, log=log, segment=False, caption={"every": 4, "smooth": False},
                  stage=SlowStage(0.0), captioner=CountingCaptioner(),
                  on_result=results.append, on_frame=lambda r, img: images.append(img))
    assert summary.exit_code == 0 and summary.written == 12
    assert [r.frame.index for r in results] == list(range(12))
    assert [frame_level(r.frame.image) for r in results] == [(i * 10) % 250 for i in range(12)]
    assert results[5].caption.text == "frame 4" and results[11].caption.raw_text == "frame 8"
    assert len(images) == 12 and all(isinstance(i, np.ndarray) for i in images)
    assert probe_frames(out) == 12
    assert [r["frame_index"] for r in read_jsonl(log) if r["event"] == "caption"] == [0, 4, 8]
