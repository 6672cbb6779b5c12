"""Shared fixtures: small videos written into tmp_path, real RTSP servers, fake stages."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MEDIA = SHARED / "media"
SAMPLE_CLIP = REPO / "samples" / "vtest_8s.mp4"


def write_video(path: Path, n: int = 20, size: tuple[int, int] = (160, 120), fps: float = 10.0) -> Path:
    """A video whose frame i is uniformly grey level (i * 10) % 250 with a moving square."""
    w, h = size
    fourcc = "MJPG" if Path(path).suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        img = np.full((h, w, 3), (i * 10) % 250, np.uint8)
        x = (i * 7) % (w - 20)
        img[10:30, x:x + 20] = (0, 0, 255)
        writer.write(img)
    writer.release()
    return path


def frame_level(image: np.ndarray) -> int:
    """The grey level write_video used (a multiple of 10), read back away from the square."""
    return int(round(float(image[-10:, -10:].mean()) / 10.0)) * 10


def read_jsonl(path: Path) -> list[dict]:
    """Every line must parse: that is part of what the tests check."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def probe_frames(path: Path) -> int:
    """Frames ffprobe decodes to the end of the file (ffprobe must read it all)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().split(",")[0])


@pytest.fixture
def small_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "small.mp4", n=20)


class SlowStage:
    """A fake model: sleeps per frame, returns no detections, records what it saw."""

    name = "slow"

    def __init__(self, delay_s: float = 0.05, batch_size: int = 1, fail_on: set[int] | None = None) -> None:
        self.delay_s = delay_s
        self.batch_size = batch_size
        self.fail_on = fail_on or set()
        self.seen: list[int] = []

    def __call__(self, frames):
        time.sleep(self.delay_s * len(frames))
        for f in frames:
            if f.index in self.fail_on:
                raise RuntimeError(f"fake failure on frame {f.index}")
        self.seen.extend(f.index for f in frames)
        return [None for _ in frames]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed")
    return path


class RtspServer:
    """Debian's rtsp-server-perl fed by ffmpeg looping a clip (UDP transport only), on its own
    loopback address (127.x.y.z).

    rtsp-server-perl resets its RTP listening port to 20000 whenever it has no mounts, so two
    servers on one address (two cameras, or another test run on the same machine) collide
    there and the second publisher's RECORD fails with 404; a separate address per server keeps
    them apart. The server never frees a mount whose publisher left, so a publisher that
    stopped can only come back after a restart (``kill()`` then ``start()``).
    """

    def __init__(self, clip: Path, mount: str = "cam1", size: tuple[int, int] | None = None,
                 gop: int = 10, fps: float | None = None) -> None:
        import random

        need_tool("rtsp-server-perl")
        need_tool("ffmpeg")
        self.clip = clip
        self.mount = mount
        self.size = size
        self.gop, self.fps = gop, fps  # keyframe interval (frames) and rate when re-encoding
        self.host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.client_port = free_port()
        self.source_port = free_port()
        self.server: subprocess.Popen | None = None
        self.publisher: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.client_port}/{self.mount}"

    def start(self, publish: bool = True) -> "RtspServer":
        self.server = subprocess.Popen(
            ["rtsp-server-perl", "-c", str(self.client_port), "-s", str(self.source_port), "-l", "1",
             "--client_listen_address", self.host, "--source_listen_address", self.host],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_port(self.source_port)
        if publish:
            self.publish()
        return self

    def publish(self, size: tuple[int, int] | None = None) -> None:
        size = size or self.size
        vf = ["-vf", f"scale={size[0]}:{size[1]}"] if size else []
        rate = ["-r", f"{self.fps:g}"] if self.fps else []
        # A fixed GOP (no scene-cut keyframes: the clip's loop point would add one).
        codec = (["-c:v", "libx264", "-preset", "ultrafast", "-g", str(self.gop),
                  "-sc_threshold", "0", "-bf", "0"] if size else ["-c:v", "copy"])
        self.publisher = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip), "-an", *vf, *rate, *codec,
             "-f", "rtsp", f"rtsp://{self.host}:{self.source_port}/{self.mount}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def stop_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.kill()
            self.publisher.wait(timeout=10)
            self.publisher = None

    def kill(self) -> None:
        self.stop_publisher()
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
            self.server = None

    def _wait_port(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.host, port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"rtsp server did not listen on {self.host}:{port}")


@pytest.fixture
def rtsp_server():
    servers: list[RtspServer] = []

    def make(clip: Path = SAMPLE_CLIP, **kw) -> RtspServer:
        server = RtspServer(clip, **kw)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.kill()


GST_SERVER_SCRIPT = REPO / "tests" / "gst_rtsp_server.py"
# python3-gi is Debian's: it imports in the system Python, not necessarily in the project's.
GI_PYTHONS = ("/usr/bin/python3", sys.executable)


def gi_python() -> str:
    """A Python that can import GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi)."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    for python in GI_PYTHONS:
        if os.path.exists(python) and subprocess.run([python, "-c", probe], capture_output=True,
                                                     timeout=30).returncode == 0:
            return python
    if os.environ.get("CI"):
        pytest.fail("GStreamer's RTSP server is required in CI (.ci/run installs it)")
    pytest.skip("GStreamer RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi) not installed")


class GstRtspServer:
    """GStreamer's RTSP server (tests/gst_rtsp_server.py) serving an H.264 clip over TCP
    (RTP interleaved in the RTSP connection) and/or UDP; rtsp-server-perl speaks UDP only.
    Each client session plays the clip from its start; ``kill()`` then ``start()`` is a camera
    rebooting on the same address."""

    def __init__(self, clip: Path, protocols: str = "both", mount: str = "cam1") -> None:
        self.python = gi_python()
        self.clip, self.protocols, self.mount = clip, protocols, mount
        self.port = free_port()
        self.server: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.mount}"

    def start(self) -> "GstRtspServer":
        self.server = subprocess.Popen(
            [self.python, str(GST_SERVER_SCRIPT), str(self.clip), "--host", "127.0.0.1", "--port", str(self.port),
             "--mount", self.mount, "--protocols", self.protocols],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.server.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"GStreamer RTSP server did not listen on port {self.port}")

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait(timeout=10)
            self.server = None


def gst_clip(folder: Path, seconds: int = 24) -> Path:
    """The sample clip looped to ``seconds``, at 160x120 with a keyframe a second, as H.264 MP4."""
    need_tool("ffmpeg")
    out = folder / "gst_clip.mp4"
    if out.exists():
        return out
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(SAMPLE_CLIP), "-t", str(seconds),
                    "-an", "-vf", "scale=160:120", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-bf", "0",
                    "-pix_fmt", "yuv420p", str(out)], check=True, timeout=120)
    return out


@pytest.fixture
def gst_rtsp_server(tmp_path):
    servers: list[GstRtspServer] = []

    def make(protocols: str = "both", **kw) -> GstRtspServer:
        server = GstRtspServer(gst_clip(tmp_path), protocols=protocols, **kw)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.kill()


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamcap", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)
