"""Where results go: a video file, a window, a JSONL log. Each writes as it goes and is a
context manager, so an interrupted run still leaves a playable video and complete lines."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamcap.capture import redact_url
from streamcap.errors import BadInputError, StageError

log = logging.getLogger(__name__)

JSONL_SCHEMA_VERSION = 2  # the major version, in every record's ``schema``: what readers check
# Fields added without changing any meaning raise the minor version, written in the ``run``
# record as ``schema_version`` ("2.1": ``snapshot`` on caption/alert records, ``events`` on
# stats/end records, ``schema_version`` on run records).
JSONL_SCHEMA_MINOR = 1
JSONL_SCHEMA_FULL = f"{JSONL_SCHEMA_VERSION}.{JSONL_SCHEMA_MINOR}"
VIDEO_CODECS = ("auto", "h264", "mp4v")
MP4_FRAGMENT_OPTIONS = {"movflags": "+frag_keyframe+empty_moov+default_base_moof", "frag_duration": "1000000"}
# Containers --out may name. H.264 goes in the MP4 family (written fragmented, see _open_pyav) and
# Matroska; AVI cannot carry H.264's variable timing, so it gets MPEG-4 Part 2 at a fixed rate.
MP4_FAMILY = (".mp4", ".m4v", ".mov")
H264_CONTAINERS = MP4_FAMILY + (".mkv",)
VIDEO_CONTAINERS = H264_CONTAINERS + (".avi",)


def check_video_output(path: str | os.PathLike, codec: str = "auto") -> None:
    """The container (from the file name) and codec can go together; BadInputError otherwise."""
    if codec not in VIDEO_CODECS:
        raise BadInputError(f"unknown codec {codec!r}; choose one of {', '.join(VIDEO_CODECS)}")
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_CONTAINERS:
        raise BadInputError(f"cannot write a video named {Path(path).name!r}: the output name must end in "
                            f"{', '.join(VIDEO_CONTAINERS[:-1])} or {VIDEO_CONTAINERS[-1]}")
    if codec == "h264" and suffix not in H264_CONTAINERS:
        raise BadInputError(f"{suffix} cannot hold H.264: use --codec mp4v (or auto) for {suffix}, "
                            f"or name the output {', '.join(H264_CONTAINERS)}")


def iso_time(ts: float) -> str:
    """ISO-8601 UTC wall-clock time with milliseconds."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def check_output_path(path: str | os.PathLike, inputs: list[str] = (), *, overwrite: bool = False,
                      append: bool = False) -> Path:
    """Validate an output path before any work starts; raises BadInputError with one line.

    Refuses: a symlink (it could point anywhere), the same file as an input, a folder, a
    parent that cannot be created or written, and (unless ``overwrite`` or ``append``) an
    existing file.
    """
    p = Path(path)
    if p.is_symlink():
        raise BadInputError(f"refusing to write through a symbolic link: {p}")
    if p.is_dir():
        raise BadInputError(f"output path is a folder: {p}")
    for src in inputs:
        try:
            if Path(src).exists() and p.exists() and os.path.samefile(src, p):
                raise BadInputError(f"output path is the input file: {p}")
        except OSError:
            pass
        if Path(src).resolve() == p.resolve():
            raise BadInputError(f"output path is the input file: {p}")
    if p.exists() and not (overwrite or append):
        raise BadInputError(f"output exists: {p} (pass --overwrite to replace it)")
    ensure_writable_dir(p.parent if str(p.parent) else Path("."), "output folder")
    _probe_writable(p)
    return p


def ensure_writable_dir(folder: Path, what: str) -> Path:
    """``folder`` created if missing and writable, or one BadInputError line naming it as ``what``
    (e.g. "output folder", "--events-dir")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"cannot create {what} {folder}: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"{what} is not writable: {folder}")
    return folder


def _probe_writable(p: Path) -> None:
    """Open the output for writing as the run will, then leave everything as it was: the
    permission bits alone do not tell (root passes os.access; /proc or a read-only file
    system only refuse when asked). An existing file is opened to append (not changed); a new
    one is created and removed again. Non-blocking, so a FIFO cannot hang the check."""
    existed = p.exists()
    flags = os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    flags |= os.O_APPEND if existed else os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(p, flags, 0o644)
    except OSError as err:
        what = "open output" if existed else "create output"
        raise BadInputError(f"cannot {what} {p}: {err.strerror or err}") from None
    os.close(fd)
    if not existed:
        try:
            os.unlink(p)
        except OSError:
            pass


class JsonlSink:
    """One JSON object per line, flushed per line, appended safely to an existing file.

    Every record carries ``schema``, ``event`` and ``time`` (ISO-8601 UTC). A file whose last
    line was cut off by an earlier crash has that partial line removed before appending, so
    every line of the file parses.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._broken = False
        self.lines = 0

    def open(self) -> "JsonlSink":
        """Open for appending, never through a symbolic link (O_NOFOLLOW, checked by the same
        call that opens, so a link swapped in after check_output_path is refused too); then
        cut a partial last line through that same descriptor."""
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BadInputError(f"refusing to write through a symbolic link: {self.path}") from None
            raise BadInputError(f"cannot open log {self.path}: {err.strerror or err}") from None
        try:
            self._repair_tail(fd)
        except OSError as err:
            os.close(fd)
            raise BadInputError(f"cannot repair log {self.path}: {err.strerror or err}") from None
        self._fd = fd
        self._broken = False
        return self

    def _repair_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # Find the end of the last complete line and cut what follows.
        pos, cut, chunk = size, 0, 4096
        while pos > 0:
            start = max(0, pos - chunk)
            data = os.pread(fd, pos - start, start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            pos = start
        os.ftruncate(fd, cut)
        log.warning("removed an incomplete last line (%d bytes) from %s", size - cut, self.path)

    def write(self, event: str, *, source: str | None = None, ts: float | None = None, **fields: Any) -> None:
        """Append one record with a single unbuffered write. When the write fails (disk full,
        file too large) the part that got out is cut off again, so the file still ends with a
        complete line; the first failure raises StageError and later records are dropped."""
        self.write_record(make_record(event, source=source, ts=ts, **fields))

    def write_record(self, record: dict[str, Any]) -> None:
        """Append a record built by ``make_record`` (the record tap builds it once, adds to it,
        writes it here and hands the same dict to its subscribers)."""
        self._append(record_line(record).encode("utf-8"), 1)

    def write_lines(self, lines: list[str]) -> None:
        """Append complete JSON lines (each without its newline, already built by
        ``record_line`` somewhere: the Ray driver forwards its actors' lines) with one write,
        all or none of them, as ``write_record`` does for one."""
        if lines:
            self._append(("\n".join(lines) + "\n").encode("utf-8"), len(lines))

    def _append(self, data: bytes, count: int) -> None:
        with self._lock:
            if self._fd is None or self._broken:
                return
            start = None
            try:
                start = os.lseek(self._fd, 0, os.SEEK_END)
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as err:
                self._broken = True
                if start is not None:
                    try:
                        os.ftruncate(self._fd, start)
                    except OSError:
                        pass
                raise StageError(f"cannot write log {self.path}: {err.strerror or err}") from None
            self.lines += count

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                finally:
                    self._fd = None

    def __enter__(self) -> "JsonlSink":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_record(event: str, *, source: str | None = None, ts: float | None = None, **fields: Any) -> dict[str, Any]:
    """The dict one JSONL line holds: ``schema``, ``event``, ``time``, ``source``, then the
    fields with credentials removed from every URL."""
    import time

    record = {"schema": JSONL_SCHEMA_VERSION, "event": event,
              "time": iso_time(time.time() if ts is None else ts), "source": source}
    record.update(_redacted(fields) if _holds_url(fields) else fields)
    return record


def _holds_url(fields: dict[str, Any]) -> bool:
    """Whether any string in ``fields`` holds "://". One JSON encoding (C speed) answers it for a
    frame record with a hundred objects in a fifth of the time ``_redacted``'s walk over every
    box coordinate took; JSON never escapes ':' or '/', so the text holds "://" exactly when a
    string does."""
    try:
        return "://" in json.dumps(fields, ensure_ascii=False, default=_json_default, check_circular=False)
    except (TypeError, ValueError):
        return True  # the walk decides (and the log's own encoding reports what is wrong)


def record_line(record: dict[str, Any]) -> str:
    """One JSONL line (with its newline) for a record."""
    return json.dumps(record, ensure_ascii=False, default=_json_default, separators=(",", ":")) + "\n"


def _redacted(value: Any) -> Any:
    """Credentials removed from every URL in the strings of a record (a safety net: sources
    are named without them, but an error message may quote a URL)."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class VideoFileSink:
    """Writes annotated frames to a video file, timed by each frame's stream time.

    ``codec="auto"`` writes browser-playable H.264 with PyAV (libx264) into .mp4/.m4v/.mov/.mkv
    and falls back to OpenCV's ``mp4v`` when PyAV or libx264 is missing; .avi always gets
    ``mp4v`` (MPEG-4 Part 2); ``encoder`` says which was used. The
    size is fixed by the first frame (made even for yuv420p); later frames of another size
    (a camera that reconnected at a new resolution) are resized to it.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, codec: str = "auto", crf: int = 23,
                 preset: str = "veryfast") -> None:
        check_video_output(path, codec)
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.encoder: str | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.failed = False
        self._container = None
        self._stream = None
        self._writer: cv2.VideoWriter | None = None
        self._last_pts = -1

    # -- opening -------------------------------------------------------------------------------
    def _open(self, width: int, height: int) -> None:
        self.size = (width - width % 2, height - height % 2)
        if self.codec in ("auto", "h264") and self.path.suffix.lower() in H264_CONTAINERS:
            try:
                self._open_pyav()
                return
            except Exception as err:  # PyAV missing, or no libx264 in its FFmpeg
                if self.codec == "h264":
                    raise StageError(f"cannot open H.264 encoder for {self.path}: {err}") from None
                log.warning("H.264 via PyAV unavailable (%s); falling back to mp4v", err)
        self._open_cv2()

    def _open_pyav(self) -> None:
        import av

        # Fragmented MP4: the (empty) index goes first and a fragment follows about every
        # second, so a run killed hard (SIGKILL, power loss, full disk) leaves a file that
        # plays up to its last fragment; it streams in browsers like a faststart file.
        # (Container options: "movflags" among the encoder's options was silently ignored.)
        # Matroska needs no options: it plays up to the last cluster written anyway.
        options = dict(MP4_FRAGMENT_OPTIONS) if self.path.suffix.lower() in MP4_FAMILY else {}
        container = av.open(str(self.path), mode="w", options=options)
        try:
            stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.options = {"preset": self.preset, "crf": str(self.crf)}
            stream.time_base = Fraction(1, 1000)
            # The encoder counts in milliseconds too: with its default 1/fps time base, two
            # frames closer than 1/fps (variable frame rate, a live camera's jitter) round to
            # the same tick and the muxer fails the whole file with EINVAL.
            stream.codec_context.time_base = Fraction(1, 1000)
        except Exception:
            container.close()
            raise
        self._container, self._stream = container, stream
        self.encoder = "h264 (libx264 via PyAV)"

    def _open_cv2(self) -> None:
        # The same MPEG-4 Part 2 encoder either way; in AVI under the tag players know best.
        fourcc = "XVID" if self.path.suffix.lower() == ".avi" else "mp4v"
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.size)
        if not writer.isOpened():
            raise StageError(f"cannot open video writer for {self.path}")
        self._writer = writer
        self.encoder = "mp4v (OpenCV)"

    # -- writing -------------------------------------------------------------------------------
    def write(self, image: np.ndarray, pts_s: float | None = None) -> None:
        if self.size is None:
            self._open(image.shape[1], image.shape[0])
        assert self.size is not None
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        try:
            if self._writer is not None:
                self._writer.write(image)
            else:
                self._write_pyav(image, pts_s)
        except OSError as err:
            self.failed = True
            raise StageError(f"cannot write video {self.path}: {err.strerror or err}") from None
        except Exception as err:
            self.failed = True
            raise StageError(f"cannot write video {self.path}: {err}") from None
        self.frames += 1

    def _write_pyav(self, image: np.ndarray, pts_s: float | None) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        pts = int(round((pts_s if pts_s is not None else self.frames / self.fps) * 1000))
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the source says
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finalize the container (the file plays after this)."""
        try:
            if self._container is not None:
                try:
                    if not self.failed:
                        for packet in self._stream.encode():
                            self._container.mux(packet)
                finally:
                    self._container.close()
            if self._writer is not None:
                self._writer.release()
        except Exception as err:
            self.failed = True
            raise StageError(f"cannot finalize video {self.path}: {err}") from None
        finally:
            self._container = self._stream = self._writer = None

    def mark_partial(self) -> Path | None:
        """Rename an output that failed midway to ``NAME.partial.EXT``; returns the new path."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        try:
            os.replace(self.path, target)
        except OSError:
            return None
        return target

    def __enter__(self) -> "VideoFileSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def display_available() -> bool:
    """True when a window can be opened (a display and an OpenCV build with a GUI)."""
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = info.split("GUI:", 1)[1].split("\n", 1)[0] if "GUI:" in info else ""
    return "NONE" not in gui.upper()


class WindowSink:
    """Shows frames in an OpenCV window. Must be used from the main thread only."""

    def __init__(self, title: str = "streamcap") -> None:
        if not display_available():
            raise BadInputError("--show needs a display and an OpenCV build with a GUI "
                                "(pip install opencv-python); this machine has neither")
        self.title = title
        self.closed = False

    def show(self, image: np.ndarray) -> bool:
        """Show one frame; False once the user pressed q/Esc or closed the window."""
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.closed = True
        return not self.closed

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass
