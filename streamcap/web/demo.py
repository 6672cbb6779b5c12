"""The upload demo: an image (or a short video) in; masks, caption, per-word attention out.

Served by the same standard-library server as the dashboard (``streamcap demo``): no extra
dependency, works offline. The browser sends the file as the request body; the type is taken
from the file's first bytes (never from its name or the browser's word), sizes are checked
before anything is read, and one upload is analysed at a time.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"), (b"GIF8", ".gif"))
MAX_PIXELS = 40_000_000  # 40 megapixels


def sniff(head: bytes) -> tuple[str, str] | None:
    """("image" | "video", extension) from a file's first bytes, or None for anything else."""
    for magic, ext in IMAGE_MAGIC:
        if head.startswith(magic):
            return "image", ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", ".webp"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video", ".avi"
    if head[4:8] == b"ftyp":
        return "video", ".mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video", ".mkv"
    return None


class Demo:
    def __init__(self, out_dir: Path, *, segment: dict | None, caption: dict | None,
                 max_image_mb: float = 10, max_video_mb: float = 50, max_video_s: float = 30,
                 keep: int = 20) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.segment_opts, self.caption_opts = segment, caption
        self.max_image = int(max_image_mb * 1024 * 1024)
        self.max_video = int(max_video_mb * 1024 * 1024)
        self.max_video_s = max_video_s
        self.keep = keep
        self._lock = threading.Lock()
        self._segmenter = None
        self._captioner = None
        self._runs: list[Path] = []

    def limits_text(self) -> str:
        return (f"images (JPEG, PNG, WebP, BMP, GIF) up to {self.max_image / 2**20:g} MB; "
                f"videos (MP4, MOV, AVI, MKV, WebM) up to {self.max_video / 2**20:g} MB and {self.max_video_s:g} s")

    # -- models, built on first use ---------------------------------------------------------------
    def segmenter(self):
        if self._segmenter is None and self.segment_opts is not None:
            from streamcap.segment import SegmenterConfig, build_segmenter

            self._segmenter = build_segmenter(SegmenterConfig(**self.segment_opts))
        return self._segmenter

    def captioner(self):
        if self._captioner is None and self.caption_opts is not None:
            from streamcap.caption.api import Captioner

            opts = {k: v for k, v in self.caption_opts.items() if k in ("model", "beam", "device")}
            self._captioner = Captioner(**opts)
        return self._captioner

    # -- one request ---------------------------------------------------------------------------------
    def handle(self, headers: Any, rfile: Any) -> tuple[int, dict]:
        """(HTTP status, JSON body) for an upload; the body is read only when within limits."""
        try:
            length = int(headers.get("Content-Length", ""))
        except ValueError:
            return 411, {"error": "the upload needs a Content-Length"}
        limit = max(self.max_image, self.max_video)
        if length <= 0:
            return 400, {"error": "the upload is empty"}
        if length > limit:
            return 413, {"error": f"the upload is {length / 2**20:.1f} MB; the limit is {self.limits_text()}"}
        data = rfile.read(length)
        kind = sniff(data[:16])
        if kind is None:
            return 415, {"error": f"not an image or video this demo takes: {self.limits_text()}"}
        if kind[0] == "image" and length > self.max_image:
            return 413, {"error": f"the image is {length / 2**20:.1f} MB; the limit is {self.max_image / 2**20:g} MB"}
        if not self._lock.acquire(blocking=False):
            return 503, {"error": "busy with another upload; try again in a moment"}
        try:
            run_dir = self._new_run()
            if kind[0] == "image":
                return self.image(data, run_dir)
            return self.video(data, kind[1], run_dir)
        finally:
            self._lock.release()

    def _new_run(self) -> Path:
        run_dir = self.out_dir / uuid.uuid4().hex[:12]
        run_dir.mkdir()
        self._runs.append(run_dir)
        while len(self._runs) > self.keep:  # bounded disk use: oldest results go first
            shutil.rmtree(self._runs.pop(0), ignore_errors=True)
        return run_dir

    def _url(self, path: Path) -> str:
        return "/demo/files/" + path.relative_to(self.out_dir).as_posix()

    def image(self, data: bytes, run_dir: Path) -> tuple[int, dict]:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return 415, {"error": "the file starts like an image but cannot be decoded"}
        if image.shape[0] * image.shape[1] > MAX_PIXELS:
            return 413, {"error": f"the image has {image.shape[1]}x{image.shape[0]} pixels; the limit is 40 megapixels"}
        out: dict[str, Any] = {"kind": "image", "width": image.shape[1], "height": image.shape[0]}
        drawn = image
        seg = self.segmenter()
        if seg is not None:
            from streamcap.render import draw_detections

            det = seg.segment_images([image])[0]
            drawn = draw_detections(image, det)
            out["objects"] = [{"label": name, "score": round(float(score), 3)}
                              for name, score in zip(det.class_names, det.scores)]
        masks = run_dir / "masks.jpg"
        cv2.imwrite(str(masks), drawn)
        out["masks_url"] = self._url(masks)
        cap = self.captioner()
        if cap is not None:
            rgb = np.ascontiguousarray(image[:, :, ::-1])
            res = cap.caption_images([rgb], return_alphas=True)[0]
            out.update(caption=res.text, score=round(res.score, 3), words=res.tokens)
            if res.alphas is not None:
                from streamcap.caption.attention_map import save_attention_map

                out["attention_url"] = self._url(save_attention_map(run_dir / "attention.png", rgb,
                                                                    res.tokens, res.alphas))
            else:
                out["attention_note"] = "this caption model has no attention, so no per-word maps"
        return 200, out

    def video(self, data: bytes, ext: str, run_dir: Path) -> tuple[int, dict]:
        from streamcap.capture import SourceConfig, probe_file
        from streamcap.errors import StreamcapError
        from streamcap.runner import run

        if len(data) > self.max_video:
            return 413, {"error": f"the video is {len(data) / 2**20:.1f} MB; the limit is {self.max_video / 2**20:g} MB"}
        src = run_dir / ("input" + ext)
        src.write_bytes(data)
        try:
            info = probe_file(SourceConfig(uri=str(src), kind="file"))
        except StreamcapError as err:
            return 415, {"error": f"the video cannot be read: {err}"}
        length_s = info.frame_count / info.fps if info.fps else 0.0
        if length_s > self.max_video_s:
            return 413, {"error": f"the video is {length_s:.0f} s long; the limit is {self.max_video_s:g} s"}
        annotated = run_dir / "annotated.mp4"
        captions: list[dict] = []

        def on_result(result: Any) -> None:
            cap = result.caption
            if cap is not None and cap.text and (not captions or captions[-1]["text"] != cap.text):
                captions.append({"time_s": round(result.frame.pts_s, 2), "text": cap.text})

        cap_opts = None
        if self.caption_opts is not None:
            cap_opts = dict(self.caption_opts, interval=1.0)
            cap_opts.pop("every", None)
        try:
            summary = run(str(src), out=annotated, segment=self.segment_opts or False,
                          caption=cap_opts or False, on_result=on_result, kind="file", drop="block",
                          stage=self.segmenter(), captioner=self.captioner())
        except StreamcapError as err:
            return 415, {"error": f"the video cannot be processed: {err}"}
        finally:
            src.unlink(missing_ok=True)
        if summary.exit_code or not annotated.exists():
            return 500, {"error": f"processing failed: {summary.error or summary.reason}"}
        return 200, {"kind": "video", "frames": summary.written, "video_url": self._url(annotated),
                     "captions": captions, "length_s": round(length_s, 2)}


DEMO_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>streamcap demo</title>
<style>
body{font-family:system-ui,Arial,sans-serif;margin:1em auto;max-width:1100px;padding:0 1em;background:#fafafa;color:#111}
#drop{border:2px dashed #888;padding:2em;text-align:center;background:#fff}
#drop.over{background:#eef}
.row{display:flex;gap:1em;flex-wrap:wrap;margin-top:1em}
.row>div{flex:1 1 45%;min-width:300px}
.row img,#video video{max-width:100%;border:1px solid #ccc}
#caption{font-size:1.4em;margin:.6em 0}
#error{color:#b00}
.muted{color:#666}
</style></head><body>
<h1>streamcap demo</h1>
<p class="muted">Drop an image or a short video: objects are segmented (Mask R-CNN), the scene is captioned
(beam search), and each word's attention is shown. Limits: {{LIMITS}}.</p>
<div id="drop"><p>Drop a file here, or <input type="file" id="file" accept="image/*,video/*"></p></div>
<p id="status" class="muted"></p><p id="error"></p>
<div id="caption"></div><div id="objects" class="muted"></div>
<div class="row"><div id="masks"></div><div id="attention"></div></div>
<div id="video"></div><ol id="captions"></ol>
<script>
"use strict";
function $(id){return document.getElementById(id);}
function clear(){["caption","objects","masks","attention","video","captions","error"].forEach(function(i){$(i).innerHTML="";});}
function img(url, alt){var i=document.createElement("img"); i.src=url; i.alt=alt; return i;}
function upload(file){
  clear(); $("status").textContent = "analysing " + file.name + " ...";
  var x = new XMLHttpRequest(); x.open("POST", "/api/demo");
  x.setRequestHeader("Content-Type", "application/octet-stream");
  x.onload = function(){
    var r = JSON.parse(x.responseText); $("status").textContent = "";
    if(x.status != 200){ $("error").textContent = r.error; return; }
    if(r.caption){ $("caption").textContent = "\u201c" + r.caption + "\u201d (score " + r.score + ")"; }
    if(r.objects){ $("objects").textContent = r.objects.length ? "objects: " + r.objects.map(function(o){return o.label + " " + o.score;}).join(", ") : "no objects found"; }
    if(r.masks_url){ $("masks").appendChild(img(r.masks_url, "masks")); }
    if(r.attention_url){ $("attention").appendChild(img(r.attention_url, "attention per word")); }
    else if(r.attention_note){ $("attention").textContent = r.attention_note; }
    if(r.video_url){ var v=document.createElement("video"); v.controls=true; v.src=r.video_url; $("video").appendChild(v);
      var a=document.createElement("a"); a.href=r.video_url; a.textContent=" download the annotated video"; $("video").appendChild(a);
      (r.captions||[]).forEach(function(c){var li=document.createElement("li"); li.textContent=c.time_s.toFixed(1)+" s: "+c.text; $("captions").appendChild(li);}); }
  };
  x.onerror = function(){ $("status").textContent = ""; $("error").textContent = "upload failed"; };
  x.send(file);
}
$("file").onchange = function(){ if(this.files.length) upload(this.files[0]); };
var drop = $("drop");
drop.ondragover = function(e){e.preventDefault(); drop.className="over";};
drop.ondragleave = function(){drop.className="";};
drop.ondrop = function(e){e.preventDefault(); drop.className=""; if(e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);};
</script></body></html>
"""
