"""What the user sees and keeps: mask overlay (alpha blend + contour), HUD, and the annotated mp4 with its audio.

``overlay`` colours a mask at the frame's resolution: a binary mask (S4/MS3) in one highlight colour, a semantic
label map (AVSS) with the manifest's palette, background left untouched. ``draw_hud`` writes status lines (fps,
model latency, audio level) in a box at the top left. :class:`Mp4Writer` encodes annotated frames (H.264 when
PyAV's FFmpeg has libx264, else MPEG-4 Part 2) at their own timestamps and muxes the audio back as AAC.
"""
from __future__ import annotations

import fractions
import math
from pathlib import Path
from typing import Optional, Sequence

import av
import cv2
import numpy as np

__all__ = ["HIGHLIGHT_BGR", "colorize", "overlay", "draw_hud", "format_hud", "write_mask_png", "Mp4Writer"]

HIGHLIGHT_BGR = (0, 140, 255)  # orange: the sounding object of a binary mask
CONTOUR_BGR = (255, 255, 255)
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_GAP_TOLERANCE = 0.02  # seconds; as runtime.sync
VIDEO_CODECS = ("libx264", "mpeg4")


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], binary: bool) -> np.ndarray:
    """BGR colours of a mask: ``HIGHLIGHT_BGR`` where a binary mask is set, else ``palette[label]`` (RGB rows)."""
    if binary:
        out = np.zeros((*mask.shape, 3), dtype=np.uint8)
        out[mask.astype(bool)] = HIGHLIGHT_BGR
        return out
    lut = np.zeros((256, 3), dtype=np.uint8)
    table = np.asarray(palette, dtype=np.uint8)[:256, ::-1]
    lut[:table.shape[0]] = table
    return lut[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], binary: bool,
            alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """``image`` (BGR uint8) with ``mask`` (same H x W; 0 = background) blended in at ``alpha`` and outlined."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image {image.shape[:2]}: resize it first")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    out = image.copy()
    fg = mask != 0
    if fg.any():
        colours = colorize(mask, palette, binary)
        blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
        out[fg] = blended[fg]
        if contour:
            edges = fg.astype(np.uint8)
            contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            thickness = max(1, round(min(image.shape[:2]) / 240))
            cv2.drawContours(out, contours, -1, CONTOUR_BGR, thickness, cv2.LINE_AA)
    return out


def format_hud(fps: Optional[float], model_ms: Optional[float], audio_dbfs: float, extra: Sequence[str] = ()
               ) -> list[str]:
    """The HUD's lines: throughput, model latency, audio level, then ``extra``."""
    level = "silent" if not math.isfinite(audio_dbfs) else f"{audio_dbfs:5.1f} dBFS"
    return [f"{fps:5.1f} fps" if fps else "  --- fps",
            f"model {model_ms:6.1f} ms" if model_ms is not None else "model   --- ms",
            f"audio {level}", *extra]


def draw_hud(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Draw ``lines`` in a translucent box at the top left of ``image`` (in place); returns ``image``."""
    if not lines:
        return image
    scale = max(0.4, min(image.shape[:2]) / 720)
    thickness = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0] for line in lines]
    step = max(h for _, h in sizes) + int(10 * scale)
    width = max(w for w, _ in sizes) + int(16 * scale)
    height = step * len(lines) + int(8 * scale)
    box = image[:height, :width]
    box[:] = (box * 0.4).astype(np.uint8)
    for i, line in enumerate(lines):
        org = (int(8 * scale), int(4 * scale) + step * (i + 1) - int(4 * scale))
        cv2.putText(image, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def write_mask_png(directory: Path, index: int, mask: np.ndarray) -> Path:
    """Save a mask as ``<directory>/<index:06d>.png``: 0/255 for binary masks, class indices for label maps."""
    path = Path(directory) / f"{index:06d}.png"
    if not cv2.imwrite(str(path), mask.astype(np.uint8)):
        raise OSError(f"could not write {path}")
    return path


def _pick_video_codec() -> str:
    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):
            continue
    raise RuntimeError(f"PyAV's FFmpeg has none of the video encoders {', '.join(VIDEO_CODECS)}")


class Mp4Writer:
    """Annotated frames + audio into one mp4.

    Frames carry the timestamps they were captured at (seconds on the pipeline clock): the first frame is time 0 of
    the file and the others keep their spacing, so a file source keeps its speed and a live one its real pace.
    ``fps`` is the nominal rate (each frame's duration in the file). Audio (``audio_rate``/``audio_channels`` given
    up front; AAC) is written from the first frame's time on, kept contiguous: a gap becomes silence, an overlap is
    dropped, and audio past the end of the newest frame is held back, so the file's audio never outlasts its video
    (what is still held at ``close()`` is dropped). With ``fragment_seconds`` the mp4 is fragmented (the moov
    after the first fragment, then self-contained fragments of at most that length), so a process killed
    mid-write leaves a file that plays up to its last complete fragment. ``close()`` flushes both encoders; it is
    safe to call more than once.
    """

    def __init__(self, path: Path, audio_rate: Optional[int] = None, audio_channels: int = 1, fps: float = 30.0,
                 fragment_seconds: Optional[float] = None):
        self.path = Path(path)
        self.fps = fractions.Fraction(fps).limit_denominator(1001)
        self.audio_rate = int(audio_rate) if audio_rate else None
        self.audio_channels = int(audio_channels)
        if self.audio_channels not in (1, 2):
            raise ValueError(f"audio_channels must be 1 or 2; got {audio_channels}")
        self.fragment_seconds = fragment_seconds
        self.frames = 0
        self.audio_samples = 0  # encoded
        self._audio_end = 0  # accepted: encoded + held back
        self._held = np.zeros((0, self.audio_channels), np.float32)
        self._video_end = 0.0  # seconds from the first frame to the end of the newest one
        self._container = None
        self._video = None
        self._audio = None
        self._t0: Optional[float] = None
        self._last_pts = -1
        self._pending_audio: list[tuple[np.ndarray, int, Optional[float]]] = []
        self._closed = False

    def add_frame(self, image: np.ndarray, timestamp: float) -> None:
        """Encode one BGR frame shown at ``timestamp``."""
        if self._closed:
            raise RuntimeError(f"{self.path} is closed")
        if self._container is None:
            self._open(image.shape[1], image.shape[0], timestamp)
        height, width = self._video.height, self._video.width
        if image.shape[:2] != (height, width):
            image = cv2.copyMakeBorder(image[:height, :width], 0, max(0, height - image.shape[0]), 0,
                                       max(0, width - image.shape[1]), cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        pts = max(int(round((timestamp - self._t0) / VIDEO_TIME_BASE)), self._last_pts + 1)
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        self._last_pts = pts
        self._mux(self._video.encode(frame))
        self.frames += 1
        self._video_end = float(pts * VIDEO_TIME_BASE + 1 / self.fps)
        pending, self._pending_audio = self._pending_audio, []
        for samples, rate, ts in pending:
            self.add_audio(samples, rate, ts)
        self._encode_audio()

    def add_audio(self, samples: np.ndarray, sample_rate: int, timestamp: Optional[float] = None) -> None:
        """Queue audio ``(n,)`` or ``(n, channels)`` (int16 or float in [-1, 1]) whose first sample is at
        ``timestamp`` (None: right after the previous chunk). Needs ``audio_rate`` and the same ``sample_rate``."""
        if self.audio_rate is None or self._closed:
            return
        if int(sample_rate) != self.audio_rate:
            raise ValueError(f"audio at {sample_rate} Hz given to a writer opened for {self.audio_rate} Hz")
        if self._container is None:
            self._pending_audio.append((samples, sample_rate, timestamp))
            return
        data = _as_float_channels(samples, self.audio_channels)
        rate = self.audio_rate
        if timestamp is not None:
            offset = int(round((timestamp - self._t0) * rate)) - self._audio_end
            if offset > AUDIO_GAP_TOLERANCE * rate:
                data = np.concatenate([np.zeros((offset, data.shape[1]), np.float32), data])
            elif offset < -AUDIO_GAP_TOLERANCE * rate:
                data = data[min(-offset, data.shape[0]):]
        if data.shape[0] == 0:
            return
        self._held = np.concatenate([self._held, data])
        self._audio_end += data.shape[0]
        self._encode_audio()

    def _encode_audio(self) -> None:
        """Encode the held audio up to the end of the newest frame."""
        if self._audio is None:
            return
        count = min(self._held.shape[0], int(round(self._video_end * self.audio_rate)) - self.audio_samples)
        if count <= 0:
            return
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(self._held[:count].T), format="fltp",
                                           layout="mono" if self.audio_channels == 1 else "stereo")
        frame.sample_rate, frame.pts = self.audio_rate, self.audio_samples
        frame.time_base = fractions.Fraction(1, self.audio_rate)
        self.audio_samples += count
        self._held = self._held[count:]
        self._mux(self._audio.encode(frame))

    def close(self) -> None:
        """Flush the encoders and finish the file (a writer that saw no frame writes nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            self._encode_audio()
            self._held = self._held[:0]
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._mux(self._audio.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, width: int, height: int, timestamp: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {}
        if self.fragment_seconds:
            # NOTE: delay_moov keeps the edit list (audio priming stays in sync); flush_packets puts each fragment
            # on disk when it is cut, not when the IO buffer fills.
            options = {"movflags": "delay_moov+default_base_moof", "flush_packets": "1",
                       "frag_duration": str(int(self.fragment_seconds * 1e6))}
        self._container = av.open(str(self.path), "w", format="mp4", options=options)
        codec = _pick_video_codec()
        self._video = self._container.add_stream(codec, rate=self.fps)
        if self.fragment_seconds and codec == "libx264":
            self._video.options = {"tune": "zerolatency"}  # no look-ahead: each frame reaches the file at once
        self._video.width, self._video.height = width + width % 2, height + height % 2
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.max_b_frames = 0  # no reordering delay: frames are written as they come
        self._video.time_base = VIDEO_TIME_BASE
        self._video.codec_context.time_base = VIDEO_TIME_BASE
        if self.audio_rate is not None:
            self._audio = self._container.add_stream(
                "aac", rate=self.audio_rate, layout="mono" if self.audio_channels == 1 else "stereo")
        self._t0 = timestamp

    def _mux(self, packets) -> None:
        for packet in packets:
            if packet.stream is self._video and not packet.duration:
                packet.duration = int(round(1 / (self.fps * VIDEO_TIME_BASE)))
            self._container.mux(packet)


def _as_float_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """``(n, channels)`` float32 in [-1, 1] from ``(n,)``/``(n, c)`` int16 or float (mixed down or duplicated)."""
    data = np.asarray(samples)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    data = data.astype(np.float32, copy=False)
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[1] != channels:
        mono = data.mean(axis=1, keepdims=True)
        data = np.repeat(mono, channels, axis=1)
    return data
