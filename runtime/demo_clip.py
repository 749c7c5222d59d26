"""A generated audio-visual clip for ``avs-stream --demo`` and the tests: no camera, no microphone, no download.

The picture is a textured background with a ball that moves and "speaks": while it speaks, the soundtrack carries
a voiced, syllable-modulated harmonic tone (a crude stand-in for speech) and the ball pulses; otherwise there is a
faint noise floor. With ``tone_onset`` the clip is silent until that time and a pure tone starts exactly there
(for synchronisation tests). Written with PyAV (H.264 + AAC in mp4), so no system ffmpeg is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from runtime.render import Mp4Writer

__all__ = ["ClipInfo", "speaking", "synth_audio", "synth_frames", "make_clip"]

SPEECH_PERIOD = 2.0  # seconds: the ball speaks during the first half of every period
PITCH_HZ = 180.0
SYLLABLE_HZ = 4.0
TONE_HZ = 1000.0


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`make_clip` wrote."""
    path: Path
    seconds: float
    fps: float
    frames: int
    width: int
    height: int
    sample_rate: int
    channels: int
    tone_onset: Optional[float]


def speaking(t: np.ndarray | float) -> np.ndarray:
    """Whether the ball speaks at time(s) ``t``."""
    return (np.asarray(t) % SPEECH_PERIOD) < SPEECH_PERIOD / 2


def synth_audio(seconds: float, sample_rate: int, channels: int = 1, tone_onset: Optional[float] = None,
                seed: int = 0) -> np.ndarray:
    """The soundtrack, float32 ``(samples, channels)`` in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    if tone_onset is not None:
        mono = np.where(t >= tone_onset, 0.4 * np.sin(2 * np.pi * TONE_HZ * (t - tone_onset)), 0.0)
    else:
        voice = sum(np.sin(2 * np.pi * PITCH_HZ * k * t) / k for k in range(1, 8))
        envelope = 0.5 * (1 - np.cos(2 * np.pi * SYLLABLE_HZ * t))
        mono = 0.25 * voice * envelope * speaking(t) + 0.005 * rng.standard_normal(t.size)
    return np.repeat(mono.astype(np.float32)[:, None], channels, axis=1)


def _ball(i: int, fps: float, width: int, height: int) -> tuple[int, int, int]:
    t = i / fps
    x = int(width * (0.5 + 0.35 * np.sin(2 * np.pi * t / 5.0)))
    y = int(height * (0.55 + 0.2 * np.sin(2 * np.pi * t / 3.1)))
    radius = int(min(width, height) * (0.16 + (0.03 * np.sin(2 * np.pi * SYLLABLE_HZ * t) if speaking(t) else 0)))
    return x, y, radius


def synth_frames(count: int, fps: float, width: int, height: int) -> Iterator[np.ndarray]:
    """The ``count`` BGR frames of the picture."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                     ((xx // 40 + yy // 40) % 2) * 60 + 60], axis=-1).astype(np.uint8)
    for i in range(count):
        frame = base.copy()
        x, y, radius = _ball(i, fps, width, height)
        colour = (40, 60, 230) if speaking(i / fps) else (200, 120, 40)
        cv2.circle(frame, (x, y), radius, colour, -1, cv2.LINE_AA)
        cv2.putText(frame, f"avs-edge demo  {i / fps:5.2f} s", (10, height - 12), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.4, height / 720), (255, 255, 255), 1, cv2.LINE_AA)
        yield frame


def make_clip(path: Path | str, seconds: float = 6.0, fps: float = 8.0, width: int = 640, height: int = 360,
              sample_rate: int = 44100, channels: int = 2, tone_onset: Optional[float] = None,
              seed: int = 0) -> ClipInfo:
    """Write the clip to ``path`` (mp4, H.264 + AAC) and describe it."""
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds and fps must be > 0; got seconds={seconds}, fps={fps}")
    count = int(round(seconds * fps))
    audio = synth_audio(seconds, sample_rate, channels, tone_onset, seed)
    with Mp4Writer(Path(path), audio_rate=sample_rate, audio_channels=channels, fps=fps) as writer:
        for i, frame in enumerate(synth_frames(count, fps, width, height)):
            writer.add_frame(frame, i / fps)
            if i == 0:
                writer.add_audio(audio, sample_rate, 0.0)
    return ClipInfo(Path(path), seconds, fps, count, width, height, sample_rate, channels, tone_onset)
