"""Video sources (camera index, /dev/video path, file, RTSP/HTTP URL) read in a thread, newest frame first.

``VideoSource(uri).start()`` opens the source (a missing one raises :class:`SourceError` listing the cameras that
exist) and starts a reader thread; ``read(timeout)`` returns the next :class:`Frame` or None on timeout, and
``is_streaming()`` turns False at the end. Live sources (cameras, URLs) keep only the newest frame: a consumer that
falls behind gets the latest picture, never a queue of stale ones (OpenCV's V4L2 buffer is also cut to one frame),
and ``dropped`` counts what it skipped. A file delivers every frame in order (the reader waits for the consumer).

Timestamps: cameras and URLs are stamped with ``time.monotonic()`` when the frame arrives (the clock the microphone
uses; network streams' own timestamps are often synthetic, e.g. MJPEG over HTTP); files carry their presentation
time (the clock of their own audio track).

A live source that fails mid-stream is reopened with exponential backoff (``retries`` attempts, ``backoff`` doubling
up to ``max_backoff`` seconds); when every attempt fails it stops with ``lost`` set and ``error`` saying why. A file
that ends in a decoding error or before the frame count its header declares (a truncated download) sets
``incomplete`` and ``error``.
Cameras are read with OpenCV, files and URLs with PyAV.
"""
from __future__ import annotations

import glob
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Union

import numpy as np

__all__ = ["Frame", "SourceError", "VideoURI", "parse_video_uri", "list_cameras", "VideoSource"]

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "rtp", "tcp", "srt")
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0
URL_TIMEOUT = 10.0  # seconds to open or to wait for data from a network source
FILE_QUEUE = 4


class SourceError(RuntimeError):
    """A video source that cannot be opened; the message names it and what exists instead."""


@dataclass(frozen=True)
class Frame:
    """One picture: BGR uint8 ``[H, W, 3]``, its timestamp (seconds, see the module docstring), its number."""
    image: np.ndarray
    timestamp: float
    index: int


@dataclass(frozen=True)
class VideoURI:
    """A parsed source: ``kind`` is 'camera' (``target`` an index or a device path), 'file' or 'url'."""
    kind: str
    target: Union[int, str]

    @property
    def live(self) -> bool:
        return self.kind != "file"

    def __str__(self) -> str:
        if self.kind == "camera" and isinstance(self.target, int):
            return f"camera {self.target}"
        return str(self.target)


def parse_video_uri(spec: Union[str, int, os.PathLike]) -> VideoURI:
    """Camera index (``0``), device (``/dev/video0``, ``v4l2:///dev/video0``), URL (``rtsp://...``) or file."""
    if isinstance(spec, int):
        return VideoURI("camera", spec)
    text = os.fspath(spec).strip()
    if re.fullmatch(r"\d+", text):
        return VideoURI("camera", int(text))
    if text.startswith("v4l2://"):
        return VideoURI("camera", text[len("v4l2://"):])
    if text.startswith("/dev/video"):
        return VideoURI("camera", text)
    if text.startswith("file://"):
        return VideoURI("file", text[len("file://"):])
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        return VideoURI("url", text)
    if scheme:
        raise SourceError(f"unsupported source scheme {scheme}:// in {text!r}; use a camera index, /dev/videoN, "
                          f"a file, or a {'/'.join(URL_SCHEMES[:5])} URL")
    return VideoURI("file", text)


def list_cameras() -> list[str]:
    """Video capture devices of this machine: ``/dev/videoN (name)`` from /sys (Linux), or an empty list."""
    found = []
    for dev in sorted(glob.glob("/dev/video*"), key=lambda p: int(re.sub(r"\D", "", p) or 0)):
        name_file = Path("/sys/class/video4linux") / Path(dev).name / "name"
        try:
            name = name_file.read_text().strip()
        except OSError:
            name = ""
        found.append(f"{dev} ({name})" if name else dev)
    return found


def camera_help() -> str:
    cameras = list_cameras()
    listing = ", ".join(cameras) if cameras else "none found (no /dev/video* devices)"
    return f"available cameras: {listing}"


class _Reader(Protocol):
    """An opened source: ``read()`` -> (image, presentation time or None), or None at the end / on failure."""
    finite: bool
    fps: Optional[float]

    def read(self) -> Optional[tuple[np.ndarray, Optional[float]]]: ...

    def release(self) -> None: ...


class _OpenCVCamera:
    """A camera through OpenCV (V4L2 on Linux), its driver queue cut to one frame."""
    finite = False

    def __init__(self, target: Union[int, str]):
        import cv2

        # NOTE: errors only; a missing camera is reported by us, not by OpenCV's warnings.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        backend = cv2.CAP_V4L2 if os.name == "posix" and hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        self._cap = cv2.VideoCapture(target, backend)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"cannot open camera {target}")
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None

    def read(self) -> Optional[tuple[np.ndarray, Optional[float]]]:
        ok, image = self._cap.read()
        return (image, None) if ok and image is not None else None

    def release(self) -> None:
        self._cap.release()


class _PyAVVideo:
    """A file or network stream's first video stream through PyAV (BGR frames with presentation times)."""

    def __init__(self, target: str, network: bool):
        import av

        options = {"rtsp_transport": "tcp"} if target.startswith("rtsp") else {}
        try:
            self._container = av.open(target, options=options, timeout=URL_TIMEOUT if network else None)
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {target}: {exc}") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{target} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.finite = not network
        self.declared_frames = int(stream.frames or 0)
        self._frames = self._container.decode(stream)
        self.error: Optional[str] = None

    def read(self) -> Optional[tuple[np.ndarray, Optional[float]]]:
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except (av.error.FFmpegError, OSError) as exc:
            self.error = str(exc)
            return None
        return frame.to_ndarray(format="bgr24"), frame.time

    def release(self) -> None:
        self._container.close()


def open_reader(uri: VideoURI) -> _Reader:
    """Open ``uri`` with the library that suits it; raises :class:`SourceError` naming what is missing."""
    if uri.kind == "camera":
        try:
            return _OpenCVCamera(uri.target)
        except SourceError:
            raise SourceError(f"cannot open {uri}: no such camera or it is busy; {camera_help()}") from None
    if uri.kind == "file":
        path = Path(uri.target)
        if not path.is_file():
            raise SourceError(f"video file {path} does not exist" if not path.exists() else f"{path} is not a file")
        return _PyAVVideo(str(path), network=False)
    return _PyAVVideo(str(uri.target), network=True)


class VideoSource:
    """A video source read in a background thread; see the module docstring.

    Args:
        uri: camera index, device path, file or URL (``parse_video_uri``).
        drop_stale: keep only the newest frame (default: True for live sources, False for files).
        retries, backoff, max_backoff: reconnection policy for live sources.
        opener: ``VideoURI -> reader`` (default ``open_reader``); tests pass their own.
        on_event: called with a one-line message on reconnect attempts, reconnections and loss.
    """

    def __init__(self, uri: Union[str, int, os.PathLike, VideoURI], *, drop_stale: Optional[bool] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
                 max_backoff: float = DEFAULT_MAX_BACKOFF, opener: Callable[[VideoURI], _Reader] = open_reader,
                 on_event: Callable[[str], None] = lambda message: None, clock: Callable[[], float] = time.monotonic):
        self.uri = uri if isinstance(uri, VideoURI) else parse_video_uri(uri)
        self.drop_stale = self.uri.live if drop_stale is None else bool(drop_stale)
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), float(max_backoff)
        self._opener, self._on_event, self._clock = opener, on_event, clock
        self._reader: Optional[_Reader] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._newest: Optional[Frame] = None
        self._queue: queue.Queue = queue.Queue(maxsize=FILE_QUEUE)
        self._streaming = False
        self.fps: Optional[float] = None
        self.frames_read = 0
        self.dropped = 0
        self.reconnects = 0
        self.lost = False
        self.incomplete = False
        self.error: Optional[str] = None

    def start(self) -> "VideoSource":
        """Open the source (raises :class:`SourceError`) and start reading."""
        self._reader = self._opener(self.uri)
        self.fps = self._reader.fps
        self._streaming = True
        self._thread = threading.Thread(target=self._run, name=f"video:{self.uri}", daemon=True)
        self._thread.start()
        return self

    def is_streaming(self) -> bool:
        """False once the source ended (file), was lost (live) or was closed, and every frame was read."""
        with self._cond:
            return self._streaming or self._newest is not None or not self._queue.empty()

    def read(self, timeout: Optional[float] = 1.0) -> Optional[Frame]:
        """The next frame (live: the newest one), or None after ``timeout`` seconds or at the end."""
        if not self.drop_stale:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    return self._queue.get(timeout=0.05)
                except queue.Empty:
                    if not self._streaming or (deadline is not None and time.monotonic() > deadline):
                        return None
        with self._cond:
            if self._newest is None and self._streaming:
                self._cond.wait(timeout)
            frame, self._newest = self._newest, None
            return frame

    def close(self) -> None:
        """Stop the reader thread and release the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            while self._thread.is_alive():
                try:  # a file reader may be blocked on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
        self._streaming = False

    def __enter__(self) -> "VideoSource":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reader thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                got = self._reader.read()
                if got is not None:
                    self._deliver(*got)
                    continue
                why = getattr(self._reader, "error", None) or "it stopped delivering frames"
                if self._reader.finite:
                    self._check_complete()
                    break
                if self._stop.is_set() or not self._reconnect(why):
                    break
        finally:
            if self._reader is not None:
                self._reader.release()
            with self._cond:
                self._streaming = False
                self._cond.notify_all()

    def _deliver(self, image: np.ndarray, pts: Optional[float]) -> None:
        timestamp = self._clock() if self.uri.live or pts is None else pts
        frame = Frame(image, timestamp, self.frames_read)
        self.frames_read += 1
        if not self.drop_stale:
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.05)
                    return
                except queue.Full:
                    continue
            return
        with self._cond:
            if self._newest is not None:
                self.dropped += 1
            self._newest = frame
            self._cond.notify_all()

    def _check_complete(self) -> None:
        """A file that ended in a decoding error, or before the frames its header declares, is incomplete."""
        error = getattr(self._reader, "error", None)
        declared = getattr(self._reader, "declared_frames", 0)
        if error is None and not (declared and self.frames_read < declared):
            return
        self.incomplete = True
        of = f" of the {declared} its header declares" if declared else ""
        self.error = (f"{self.uri} ended early, after {self.frames_read} frames{of}"
                      + (f" ({error})" if error else "") + ": the file is truncated or corrupt")
        self._on_event(self.error)

    def _reconnect(self, why: str) -> bool:
        """Reopen a failed live source with backoff; False (and ``lost``) when every attempt failed."""
        self._reader.release()
        self._reader = None
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            self._on_event(f"{self.uri}: {why}; reconnecting in {delay:.1f} s (attempt {attempt}/{self.retries})")
            if self._stop.wait(delay):
                return False
            try:
                self._reader = self._opener(self.uri)
            except SourceError as exc:
                why = str(exc)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.reconnects += 1
            self._on_event(f"{self.uri}: reconnected")
            return True
        self.lost = True
        self.error = f"{self.uri} was lost and did not come back after {self.retries} attempts ({why})"
        self._on_event(self.error)
        return False
