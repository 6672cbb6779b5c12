"""The dashboard's frames: drawn onto the frame scaled down to the tile's width (what the
dashboard asks for through ``wants_image``), never smaller for a consumer that needs the full
frame (a video, the event store, a subscriber that does not say)."""

from __future__ import annotations

import cv2
import numpy as np

from conftest import write_video
from streamcap.capture import SourceConfig
from streamcap.pipeline import Pipeline
from streamcap.render import Renderer
from streamcap.tap import RecordTap
from streamcap.types import Caption, Frame, FrameResult
from streamcap.web.live import LiveHub
from streamcap.writer import scale_to_width


def result(source: str = "cam1", w: int = 64, h: int = 48) -> FrameResult:
    frame = Frame(source=source, index=0, pts_s=0.0, wall_ts=0.0, image=np.zeros((h, w, 3), np.uint8))
    return FrameResult(frame=frame, caption=Caption(text="a dog", raw_text="a dog", score=-1.0, frame_index=0))


class Sized:
    def __init__(self, answer):
        self.answer, self.images = answer, []

    def wants_image(self, r):
        return self.answer

    def __call__(self, r, image):
        self.images.append(image.shape)


def test_tap_answers_the_widest_width_or_full_size():
    tap = RecordTap()
    tap.subscribe_frames(Sized(False))
    assert tap.wants_image(result()) is False
    tap.subscribe_frames(Sized(320))
    tap.subscribe_frames(Sized(480))
    assert tap.wants_image(result()) == 480
    tap.subscribe_frames(Sized(True))
    assert tap.wants_image(result()) is True
    other = RecordTap()
    other.subscribe_frames(Sized(320))
    other.subscribe_frames(lambda r, image: None)  # says nothing: the full frame
    assert other.wants_image(result()) is True


def test_hub_asks_for_its_tile_width_while_watched():
    hub = LiveHub(["cam1"], max_fps=0, max_width=32)
    assert hub.wants_image(result()) is False
    with hub.watching(hub.cameras[0]):
        assert hub.wants_image(result()) == 32
    full = LiveHub(["cam1"], max_fps=0, max_width=0)
    with full.watching(full.cameras[0]):
        assert full.wants_image(result()) is True


def test_scale_to_width_matches_one_resize():
    rng = np.random.default_rng(0)
    for (h, w), width in (((576, 768), 480), ((1080, 1920), 480), ((720, 1280), 480), ((50, 100), 40)):
        image = rng.integers(0, 256, (h, w, 3), np.uint8)
        image[h // 3:, : w // 2] = 200  # edges across band borders
        got = scale_to_width(image, width)
        want = cv2.resize(image, (width, round(h * width / w)), interpolation=cv2.INTER_LINEAR)
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def run_with(tmp_path, answer, video=False):
    path = write_video(tmp_path / "v.avi", n=5, size=(160, 120))
    sub = Sized(answer)
    tap = RecordTap()
    tap.subscribe_frames(sub)
    sink = None
    if video:
        from streamcap.sinks import VideoFileSink

        sink = VideoFileSink(tmp_path / "out.mp4", fps=10)

    def on_frame(r, image):
        tap.on_frame(r, image)

    on_frame.wants_image = tap.wants_image
    summary = Pipeline([SourceConfig(str(path))], renderer=Renderer(hud=False, banner=True), on_frame=on_frame,
                       video=sink).run()
    assert summary.written == 5
    return sub.images


def test_writer_draws_at_the_width_asked(tmp_path):
    assert run_with(tmp_path, 80) == [(60, 80, 3)] * 5  # drawn onto the scaled frame
    assert run_with(tmp_path, True) == [(120, 160, 3)] * 5
    assert run_with(tmp_path, 400) == [(120, 160, 3)] * 5  # never scaled up
    assert run_with(tmp_path, 80, video=True) == [(120, 160, 3)] * 5  # the video needs the full frame
