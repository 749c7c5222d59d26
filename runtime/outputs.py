"""Where segmented frames go: a window, an mp4 with the audio muxed back, mask PNGs and a JSONL log, as one component.

:class:`Outputs` is the ``videoOutput`` of this project: open the outputs you want, ``render()`` each frame, stop
when ``is_streaming`` turns False (q/ESC in the window), ``close()`` at the end. Files are written in a thread of
their own, in order, so drawing and encoding overlap the caller's next inference. ``close()`` finalises every file
exactly once (even when one of them fails) and reports what each file holds, read back from disk. The mp4 is
fragmented (one-second fragments), so even a process killed while writing leaves a playable file.

Output paths are checked up front (:func:`check_output_path`): a bad one raises :class:`OutputPathError` naming the
path and the reason before anything expensive (loading a model) happens.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from runtime.render import Mp4Writer, write_mask_png

__all__ = ["Outputs", "OutputError", "OutputPathError", "Window", "Mp4Contents", "check_output_path", "read_mp4"]

FRAGMENT_SECONDS = 1.0
WINDOW_NAME = "avs-stream"
QUEUE_FRAMES = 8


class OutputPathError(ValueError):
    """An output path that cannot be written; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class OutputError(RuntimeError):
    """Writing an output failed mid-run (disk full, device gone); the other outputs are still finalised."""


def check_output_path(path: Path, directory: bool = False) -> None:
    """Raise :class:`OutputPathError` unless ``path`` (a file, or a ``directory``) can be created or overwritten.

    Nothing is created: the nearest existing folder above ``path`` must be a writable directory (probed with a
    temporary file, so read-only mounts and /proc are caught), and ``path`` itself must not be the wrong kind.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise OutputPathError(path, "exists and is not a directory; name a new or existing directory")
        if not directory and path.is_dir():
            raise OutputPathError(path, "is a directory; name a file inside it instead")
        if not directory and not os.access(path, os.W_OK):
            raise OutputPathError(path, "exists and is not writable (permission denied)")
    parent = path if directory and path.is_dir() else path.parent
    parent = Path(os.path.abspath(parent))
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(path, f"{parent} is a file, so nothing can be created under it")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise OutputPathError(path, f"cannot create files in {parent} ({exc.strerror or exc}); "
                                    "choose a writable location") from None


@dataclass(frozen=True)
class Mp4Contents:
    """What an mp4 holds, read back from its packets: video frames and each stream's end time in seconds."""
    frames: int
    video_seconds: float
    audio_seconds: float  # 0.0 without an audio stream

    def __str__(self) -> str:
        audio = f", audio {self.audio_seconds:.2f} s" if self.audio_seconds else ", no audio"
        return f"{self.frames} frame{'s' * (self.frames != 1)}, video {self.video_seconds:.2f} s{audio}"


def read_mp4(path: Path) -> Mp4Contents:
    """Demux ``path`` (no decoding) and say what it holds."""
    import av

    ends = {"video": 0.0, "audio": 0.0}
    frames = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[:1] + container.streams.audio[:1]):
            if packet.pts is None or not packet.size:
                continue
            kind = packet.stream.type
            frames += kind == "video"
            ends[kind] = max(ends[kind], float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return Mp4Contents(frames, ends["video"], ends["audio"])


class Window:
    """An OpenCV window, or nothing when OpenCV has no GUI or there is no display (said once through ``say``)."""

    def __init__(self, say: Callable[[str], None] = print, name: str = WINDOW_NAME):
        import cv2

        self._cv2, self.name = cv2, name
        self.enabled = True
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # NOTE: OpenCV's Qt backend aborts the process when it cannot reach a display, so do not try.
            self.enabled = False
            say("display: no $DISPLAY or $WAYLAND_DISPLAY; running headless")
            return
        try:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        except cv2.error:
            self.enabled = False
            say("display: not available (OpenCV without GUI support); running headless")

    def show(self, image: np.ndarray) -> bool:
        """Show ``image``; False when the user pressed q or ESC."""
        if not self.enabled:
            return True
        self._cv2.imshow(self.name, image)
        return self._cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            self._cv2.destroyWindow(self.name)
            self.enabled = False


Image = Union[np.ndarray, Callable[[], np.ndarray]]
Record = Union[dict, Callable[[], dict]]


class Outputs:
    """Window, mp4 (+ audio), mask PNGs and JSONL for a stream of segmented frames; each one optional.

    Args:
        video: the mp4 to write (annotated frames at their timestamps, audio muxed back, trimmed to the video).
        masks: directory for one PNG per frame (``<index:06d>.png``).
        jsonl: file for one JSON line per frame (flushed at each line).
        window: show the frames in a window (the newest one, from the caller's thread).
        fps: nominal frame rate of the mp4; ``audio_rate``/``audio_channels``: the audio given to ``add_audio``.
    """

    def __init__(self, video: Optional[Path] = None, masks: Optional[Path] = None, jsonl: Optional[Path] = None,
                 *, window: bool = False, fps: float = 30.0, audio_rate: Optional[int] = None,
                 audio_channels: int = 1, say: Callable[[str], None] = print):
        for path, is_dir in ((video, False), (masks, True), (jsonl, False)):
            if path is not None:
                check_output_path(path, is_dir)
        self.video, self.masks, self.jsonl = (Path(p) if p is not None else None for p in (video, masks, jsonl))
        self._mp4 = (Mp4Writer(self.video, audio_rate, audio_channels, fps, fragment_seconds=FRAGMENT_SECONDS)
                     if self.video else None)
        self._pngs: list[Path] = []
        self._lines = 0
        if self.masks:
            self.masks.mkdir(parents=True, exist_ok=True)
        self._log = None
        if self.jsonl:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.jsonl, "w", encoding="utf-8")
        self._window = Window(say) if window else None
        self.is_streaming = True
        self.rendered = 0
        self._shown: Optional[np.ndarray] = None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._error: Optional[BaseException] = None
        self.report: Optional[list[str]] = None  # what each file holds, read back by close()
        self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)
        self._thread.start()

    @property
    def wants_audio(self) -> bool:
        """Whether ``add_audio`` goes anywhere (an mp4 opened with an audio rate)."""
        return self._mp4 is not None and self._mp4.audio_rate is not None

    def render(self, image: Image, timestamp: float, *, index: Optional[int] = None,
               mask: Optional[np.ndarray] = None, record: Optional[Record] = None,
               done: Optional[Callable[[], None]] = None) -> None:
        """Queue one frame for every output.

        Args:
            image: the annotated BGR frame, or a callable making it (run in the writer thread).
            timestamp: its time in seconds (the mp4 keeps the spacing of these).
            index: the PNG's number (default: frames rendered so far).
            mask: the uint8 mask for the PNG (0/255 or class indices).
            record: the JSONL line's fields, or a callable returning them (called after the mp4 and PNG).
            done: called in the writer thread once the frame is written.
        """
        self._check()
        self._queue.put((image, timestamp, self.rendered if index is None else index, mask, record, done))
        self.rendered += 1
        if self._window is not None and self._shown is not None and not self._window.show(self._shown):
            self.is_streaming = False

    def add_audio(self, samples: np.ndarray, sample_rate: int, timestamp: Optional[float] = None) -> None:
        """Queue audio for the mp4 (see :meth:`runtime.render.Mp4Writer.add_audio`); ignored without one."""
        if self.wants_audio:
            self._check()
            self._queue.put((samples, sample_rate, timestamp))

    def close(self) -> list[str]:
        """Finish every output (once; later calls only repeat the outcome) and return :attr:`report`.

        Raises :class:`OutputError` when an output failed (the others are finalised and in the report)."""
        if self.report is not None:
            self._check()
            return self.report
        self._queue.put(None)
        self._thread.join()
        closers = [c for c in (self._mp4 and self._mp4.close, self._log and self._log.close,
                               self._window and self._window.close) if c]
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001  (reported below; the other outputs still get closed)
                self._error = self._error or exc
        self.report = self._describe()
        self._check()
        return self.report

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _describe(self) -> list[str]:
        report = []
        if self.video is not None:
            report.append(f"{self.video} ({read_mp4(self.video)})" if self.video.is_file()
                          else f"{self.video} (not written: no frame)")
        if self.jsonl is not None:
            with open(self.jsonl, encoding="utf-8") as log:
                report.append(f"{self.jsonl} ({sum(1 for _ in log)} lines)")
        if self.masks is not None:
            report.append(f"{self.masks}/ ({sum(p.is_file() for p in self._pngs)} PNGs)")
        return report

    def _check(self) -> None:
        if self._error is not None:
            raise OutputError(f"writing the outputs failed: {self._error}") from self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                if len(item) == 3:
                    self._mp4.add_audio(*item)
                else:
                    self._write(*item)
            except BaseException as exc:  # noqa: BLE001  (raised in the caller's thread by _check)
                self._error = exc

    def _write(self, image: Image, timestamp: float, index: int, mask, record, done) -> None:
        image = image() if callable(image) else image
        if self._mp4 is not None:
            self._mp4.add_frame(image, timestamp)
        if self.masks is not None and mask is not None:
            self._pngs.append(write_mask_png(self.masks, index, mask))
        if self._log is not None and record is not None:
            self._log.write(json.dumps(record() if callable(record) else record) + "\n")
            self._log.flush()
        self._shown = image
        if done is not None:
            done()
