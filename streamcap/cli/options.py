"""Every option shared by more than one command, defined once (``Annotated`` types)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from streamcap.cli.common import positive as _positive

Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the annotated video here: .mp4/.mov/.m4v/.mkv (H.264) or .avi (MPEG-4 Part 2).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]
Codec = Annotated[str, typer.Option("--codec", help="auto (H.264 via PyAV, else mp4v; mp4v in .avi) | h264 | mp4v.")]
LogFile = Annotated[Optional[Path], typer.Option("--log", help="Append JSONL records here (schema in README).")]
LogEvery = Annotated[int, typer.Option("--log-every", min=0, help="A frame record every N processed frames (0: none).")]
LogMasks = Annotated[bool, typer.Option("--log-masks", help="Add COCO RLE masks to frame records.")]
Stride = Annotated[int, typer.Option("--stride", min=1, help="Take every Nth frame (others are grabbed, not decoded).")]
Drop = Annotated[Optional[str], typer.Option("--drop", help="latest (live default: newest frame wins) | block (file default: lose nothing).")]
QueueSize = Annotated[int, typer.Option("--queue-size", min=1, help="Frames buffered between capture and inference.")]
Transport = Annotated[Optional[str], typer.Option("--rtsp-transport", help="tcp | udp for RTSP sources.")]
MaxRetries = Annotated[Optional[int], typer.Option("--max-retries", min=0, help="After a failed connect, retry N more times (N+1 attempts per outage), then give up (default: retry forever).")]
OpenTimeout = Annotated[float, typer.Option("--open-timeout", callback=_positive, help="Seconds to wait for a stream to open.")]
ReadTimeout = Annotated[float, typer.Option("--read-timeout", callback=_positive, help="Seconds without any packet from a stream before the connection counts as lost.")]
FirstFrameTimeout = Annotated[float, typer.Option("--first-frame-timeout", callback=_positive, help="Seconds a stream that sends data may take to deliver its first keyframe (cameras with keyframes far apart).")]
BackoffMax = Annotated[float, typer.Option("--backoff-max", callback=_positive, help="Longest wait between reconnect attempts, seconds (backoff starts at 0.5 s and doubles).")]
Watchdog = Annotated[float, typer.Option("--watchdog", callback=_positive, help="Reconnect a live source silent for this many seconds.")]
Show = Annotated[bool, typer.Option("--show", help="Show a window (needs a display).")]
Stats = Annotated[bool, typer.Option("--stats", help="Show live statistics (fps, drops, queues, latency).")]
Hud = Annotated[bool, typer.Option("--hud", help="Draw the statistics onto the frames.")]
StatsInterval = Annotated[float, typer.Option("--stats-interval", min=0.0, help="Seconds between stats records in the log (0: none).")]
OnError = Annotated[str, typer.Option("--on-stage-error", help="skip (count the frame, stop after 5 in a row) | stop.")]
NoSegment = Annotated[bool, typer.Option("--no-segment", help="Run without the segmenter.")]
SegModel = Annotated[str, typer.Option("--seg-model", help="v1 (maskrcnn_resnet50_fpn) | v2 (maskrcnn_resnet50_fpn_v2).")]
SegWeights = Annotated[Optional[str], typer.Option("--seg-weights", help="State dict file, or 'random' (untrained, for tests and benchmarks).")]
SegSize = Annotated[Optional[int], typer.Option("--seg-size", min=0, help="Short side the model sees (default: 512 on CPU; on GPU 800, smaller frames as they are; 0: full frame).")]
Score = Annotated[float, typer.Option("--score-threshold", min=0.0, max=1.0, help="Keep detections scoring at least this.")]
MaskThr = Annotated[float, typer.Option("--mask-threshold", min=0.0, max=1.0, help="Mask probability threshold.")]
Classes = Annotated[Optional[str], typer.Option("--classes", help="Comma-separated COCO class names to keep, e.g. person,car.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32) | fp32 | bf16 | fp16.")]
MaxDet = Annotated[int, typer.Option("--max-detections", min=1, help="At most this many objects per frame.")]
Batch = Annotated[Optional[int], typer.Option("--batch", min=1, help="Frames per model call (default: 1 on CPU, 4 on GPU).")]
NoCaption = Annotated[bool, typer.Option("--no-caption", help="Run without scene captions.")]
CapModel = Annotated[Optional[Path], typer.Option("--caption-model", help="Caption checkpoint (default: the bundled model).")]
CapEvery = Annotated[Optional[int], typer.Option("--caption-every", min=1, help="Caption every N processed frames.")]
CapInterval = Annotated[Optional[float], typer.Option("--caption-interval", min=0.0, help="Caption every T seconds of stream time (default 2.0; 0: every processed frame).")]
Beam = Annotated[int, typer.Option("--beam", min=1, help="Beam width for captions.")]
SegEvery = Annotated[str, typer.Option("--seg-every", help="Run the segmenter on every Nth frame (keyframes) and carry its masks to the frames between with optical flow; auto: whenever it is free (live default). 1: every frame (file default, exact).")]
NoTrack = Annotated[bool, typer.Option("--no-track", help="No tracking ids (no #id on the tags, no track_id in the log).")]
MaxFps = Annotated[Optional[float], typer.Option("--max-fps", callback=_positive, help="With keyframes on a live source: draw and write at most this many frames a second.")]
Duration = Annotated[Optional[float], typer.Option("--duration", callback=_positive, help="Stop after this many seconds.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log source events and warnings to stderr.")]
EventsDir = Annotated[Optional[Path], typer.Option("--events-dir", help="Save a JPEG of the annotated frame at every caption change and alert here (the log's `snapshot` field names it); without --log the log goes to EVENTS_DIR/events.jsonl.")]
EventsMaxMb = Annotated[float, typer.Option("--events-max-mb", callback=_positive, help="Bound on the snapshots' total size in MB; the oldest are removed first.")]
NoIndex = Annotated[bool, typer.Option("--no-index", help="Do not keep the search index (LOG.index.sqlite) up to date while running.")]
Serve = Annotated[Optional[str], typer.Option("--serve", help="Serve the web dashboard on [HOST:]PORT (host 127.0.0.1 when left out; any other host needs --auth-token).")]
AuthToken = Annotated[Optional[str], typer.Option("--auth-token", help="With --serve or a web command: every request must carry this token (header 'Authorization: Bearer TOKEN', or open the page once with ?token=TOKEN). Needed for a non-loopback address.")]
AuthTokenFile = Annotated[Optional[Path], typer.Option("--auth-token-file", help="Read the token from this file (keeps it out of the process list).")]
