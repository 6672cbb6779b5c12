"""A GStreamer RTSP server (Debian's gir1.2-gst-rtsp-server-1.0) that serves one H.264 MP4 file
over RTP/UDP and/or RTP interleaved in the RTSP/TCP connection, for the tests. Each client gets its own pipeline, playing
the file from its start at its own rate.

Runs under the system Python that carries python3-gi (/usr/bin/python3), not the project's:
    /usr/bin/python3 tests/gst_rtsp_server.py --host 127.0.0.1 --port 8554 --mount cam1 [--protocols tcp] clip.mp4
It prints "ready" once it listens and serves until killed.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", default="cam1")
    ap.add_argument("--protocols", choices=("tcp", "udp", "both"), default="both",
                    help="lower transports offered to clients (a camera behind NAT: tcp)")
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    location = args.clip.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(f'( filesrc location="{location}" ! qtdemux ! h264parse '
                       f"! rtph264pay name=pay0 pt=96 config-interval=-1 )")
    lower = GstRtsp.RTSPLowerTrans
    factory.set_protocols({"tcp": lower.TCP, "udp": lower.UDP, "both": lower.TCP | lower.UDP}[args.protocols])
    server.get_mount_points().add_factory(f"/{args.mount}", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
