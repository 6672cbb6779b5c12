"""The upload demo (item 6): an image gives masks, a caption and per-word attention maps; a
short video comes back annotated; uploads over the limits or of another type are refused."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, write_video
from streamcap.web.demo import Demo, sniff
from streamcap.web.server import WebApp, WebServer

DOG = REPO / "samples" / "dog.jpg"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo = Demo(out, segment=dict(weights="random", seg_size=128, device="cpu", max_detections=3),
                caption=dict(model=None, beam=3, device="cpu"), max_image_mb=1, max_video_mb=2, max_video_s=5)
    server = WebServer(WebApp(demo=demo), "127.0.0.1", 0).start()
    yield server
    server.close()


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_sniff_by_content_not_name():
    assert sniff(DOG.read_bytes()[:16]) == ("image", ".jpg")
    assert sniff(b"\x00\x00\x00\x18ftypmp42") == ("video", ".mp4")
    assert sniff(b"<html><script>") is None
    assert sniff(b"#!/bin/sh\nrm -rf") is None


def test_page_served(demo_server):
    resp, data = request(demo_server, "GET", "/")
    assert resp.status == 303 and resp.getheader("Location") == "/demo"
    resp, data = request(demo_server, "GET", "/demo")
    assert resp.status == 200 and b"<input type=\"file\"" in data and b"up to 1 MB" in data


def test_image_gives_masks_caption_and_attention(demo_server):
    resp, data = request(demo_server, "POST", "/api/demo", DOG.read_bytes())
    assert resp.status == 200, data
    out = json.loads(data)
    assert out["kind"] == "image" and out["caption"] and out["words"] == out["caption"].split()
    assert isinstance(out["objects"], list)
    masks = decode(request(demo_server, "GET", out["masks_url"])[1])
    assert masks.shape[:2] == cv2.imread(str(DOG)).shape[:2]
    grid = decode(request(demo_server, "GET", out["attention_url"])[1])
    tiles = 1 + len(out["words"])  # the image, then one tile per word (5 a row, 224 px each)
    assert grid.shape[0] == 224 * -(-tiles // 5) and grid.shape[1] == 224 * min(tiles, 5)


def test_video_comes_back_annotated(demo_server, tmp_path: Path):
    clip = write_video(tmp_path / "clip.mp4", n=12, size=(160, 120), fps=10.0)
    resp, data = request(demo_server, "POST", "/api/demo", clip.read_bytes())
    assert resp.status == 200, data
    out = json.loads(data)
    assert out["kind"] == "video" and out["frames"] == 12 and out["captions"]
    resp, video = request(demo_server, "GET", out["video_url"])
    assert resp.status == 200 and resp.getheader("Content-Type") == "video/mp4"
    path = tmp_path / "annotated.mp4"
    path.write_bytes(video)
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12


def test_limits_and_types(demo_server, tmp_path: Path):
    # over the size limit: refused from the header, before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", demo_server.port, timeout=30)
    conn.putrequest("POST", "/api/demo")
    conn.putheader("Content-Length", str(10**9))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()
    # an image over the image limit (1 MB here) but under the video limit (2 MB), so the server
    # reads it and refuses it as an image (a body over both limits is refused from the header
    # while the client may still be sending: a broken pipe, not a response, for http.client)
    big = np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)
    ok, png = cv2.imencode(".png", big)
    assert 2**20 < len(png) < 2 * 2**20
    resp, data = request(demo_server, "POST", "/api/demo", png.tobytes())
    assert resp.status == 413 and json.loads(data)["error"].startswith("the image is")
    # not an image or video, whatever its name says
    resp, data = request(demo_server, "POST", "/api/demo", b"<html><script>alert(1)</script>",
                         {"Content-Type": "image/jpeg", "X-Filename": "cat.jpg"})
    assert resp.status == 415
    # a JPEG header with nothing decodable behind it
    assert request(demo_server, "POST", "/api/demo", b"\xff\xd8\xff" + b"\x00" * 100)[0].status == 415
    # a video longer than the limit (5 s here)
    long_clip = write_video(tmp_path / "long.mp4", n=80, size=(64, 48), fps=10.0)
    resp, data = request(demo_server, "POST", "/api/demo", long_clip.read_bytes())
    assert resp.status == 413 and "8 s long" in json.loads(data)["error"]
    assert request(demo_server, "POST", "/api/demo", b"")[0].status == 400
