"""Audio-visual synchronisation: which audio and which earlier frames go with each video frame.

Two rules, both from the training data (shared/specs/selm.md sections 1.3 and 6.3):

* **Audio per frame.** A frame captured at time ``t`` is paired with "the 0.96 s of audio ending at ``t``": the 96
  log-mel frames (10 ms hop, on the grid that starts at the first audio sample) whose 25 ms windows end at or before
  ``t`` (see ``runtime.audio.example_frame_range``). :class:`AudioTimeline` keeps the 16 kHz mono signal on the
  common clock and computes that example. Audio it does not have (before the first chunk, after the newest one, or
  fallen out of its ring) is silence.
* **Temporal window.** The model was trained on clips of T frames sampled at ``rate`` Hz (1 Hz for SelM). The
  newest frame is segmented as the last frame of such a clip: slot ``k`` (k = 1 .. T-1) is the cached frame nearest
  to ``t - k / rate`` within half a period. A slot with no frame there ends the window (a clip starts after a gap),
  so right after start-up the window is shorter than T; :class:`FrameHistory` picks the frames.

Timestamps are seconds on one clock shared by audio and video (``time.monotonic()`` for live devices, the stream's
presentation time for files). Everything here is pure logic: no devices, no threads, no model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

import numpy as np

from runtime.audio import (EXAMPLE_FRAMES, EXAMPLE_SPAN_SAMPLES, HOP_SAMPLES, SAMPLE_RATE,
                           WINDOW_SAMPLES, log_mel_frames, to_mono)
from runtime.resample import StreamResampler

__all__ = ["AudioTimeline", "AudioWindow", "FrameHistory", "example_end_sample", "training_timestamps"]

DEFAULT_CAPACITY_SECONDS = 12.0
# A chunk whose timestamp is off from the end of the previous one by more than this is a gap (filled with
# silence) or an overlap (dropped); smaller differences are clock jitter and are ignored.
DEFAULT_GAP_TOLERANCE = 0.02

T = TypeVar("T")


def example_end_sample(seconds_since_start: float) -> int:
    """16 kHz sample index (exclusive) where the example for a frame at ``seconds_since_start`` ends.

    That is the end of the newest 25 ms window on the 10 ms grid that ends at or before the frame; the example
    covers ``[end - EXAMPLE_SPAN_SAMPLES, end)``. Matches ``runtime.audio.example_frame_range``.
    """
    end = int(round(seconds_since_start * SAMPLE_RATE))
    last_frame = (end - WINDOW_SAMPLES) // HOP_SAMPLES
    return last_frame * HOP_SAMPLES + WINDOW_SAMPLES


def training_timestamps(count: int) -> np.ndarray:
    """Frame timestamps that pair frame ``i`` with VGGish example ``i`` of a clip's waveform, as in training.

    AVSBench (and so SelM) pairs the frame of second ``i`` with audio ``[0.96 i, 0.96 i + 0.975)`` s; a frame at
    the end of that window gets exactly it under the "audio ending at the frame" rule.
    """
    return (np.arange(count) * EXAMPLE_FRAMES * HOP_SAMPLES + EXAMPLE_SPAN_SAMPLES) / SAMPLE_RATE


@dataclass(frozen=True)
class AudioWindow:
    """The log-mel example paired with one frame, and what it covers."""
    example: np.ndarray  # float32 [1, 96, 64]
    start: float  # clock time of the first sample read
    end: float  # clock time just after the last sample read
    missing: float  # seconds of the window that were not received (taken as silence)


class AudioTimeline:
    """16 kHz mono audio on the common clock: push chunks as they come, read the example ending at any time.

    ``push(samples, sample_rate, timestamp)`` takes ``(samples,)`` or ``(samples, channels)`` audio at any
    whole-number rate (integer PCM or float in [-1, 1], as ``runtime.audio.to_mono``), with the clock time of its
    first sample (``None``: right after the previous chunk). The first chunk fixes the origin of the 10 ms grid. A
    chunk that starts later than expected leaves a gap filled with silence (lost samples, e.g. an input overflow);
    one that starts earlier has its overlap dropped. Resampling is ``runtime.resample.StreamResampler`` (resampy's
    ``kaiser_best``, as the official front-end), equal to resampling the whole signal at once, so a clip pushed in
    any chunking gives the same examples as pushed in one piece.
    """

    def __init__(self, capacity_seconds: float = DEFAULT_CAPACITY_SECONDS,
                 gap_tolerance: float = DEFAULT_GAP_TOLERANCE):
        if not capacity_seconds * SAMPLE_RATE >= EXAMPLE_SPAN_SAMPLES:
            raise ValueError(f"capacity_seconds must hold one example ({EXAMPLE_SPAN_SAMPLES / SAMPLE_RATE} s); "
                             f"got {capacity_seconds!r}")
        self.capacity = int(math.ceil(capacity_seconds * SAMPLE_RATE))
        self.gap_tolerance = float(gap_tolerance)
        self._ring = np.zeros(self.capacity, dtype=np.float64)
        self._written = 0  # 16 kHz samples appended since the origin (absolute index of the next one)
        self.origin: Optional[float] = None
        self._rate: Optional[float] = None
        self._resampler = None
        self._in_start = 0.0  # clock time of the first input sample at the current rate
        self._in_count = 0  # input samples consumed at the current rate
        self.gaps = 0
        self.gap_seconds = 0.0
        self.dropped_seconds = 0.0

    @property
    def end_time(self) -> Optional[float]:
        """Clock time just after the newest 16 kHz sample, or None before any audio."""
        return None if self.origin is None else self.origin + self._written / SAMPLE_RATE

    def push(self, samples: np.ndarray, sample_rate: float, timestamp: Optional[float] = None) -> None:
        """Append a chunk; see the class docstring."""
        mono = to_mono(samples)
        rate = float(sample_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"sample_rate must be finite and > 0 (e.g. 16000, 44100, 48000); got {sample_rate!r}")
        if timestamp is not None and not math.isfinite(timestamp):
            raise ValueError(f"timestamp must be a finite number of seconds; got {timestamp!r}")
        if self.origin is None:
            self.origin = self._in_start = float(timestamp) if timestamp is not None else 0.0
            self._start_rate(rate)
        elif rate != self._rate:
            self._drain()
            self._in_start = self.end_time
            self._start_rate(rate)
        if timestamp is not None:
            mono = self._align(mono, float(timestamp), rate)
        self._in_count += mono.size
        self._append(self._resample(mono))

    def level_dbfs(self, seconds: float = 0.1) -> float:
        """RMS level of the newest ``seconds`` of audio in dB full scale (-inf for silence or no audio)."""
        count = min(int(seconds * SAMPLE_RATE), self._written, self.capacity)
        if count <= 0:
            return -math.inf
        tail = self._read(self._written - count, self._written)
        rms = float(np.sqrt(np.mean(tail * tail)))
        return 20.0 * math.log10(rms) if rms > 0 else -math.inf

    def window(self, timestamp: float) -> AudioWindow:
        """The log-mel example for a frame at ``timestamp`` (missing audio is silence)."""
        origin = self.origin if self.origin is not None else timestamp
        end = example_end_sample(timestamp - origin)
        start = end - EXAMPLE_SPAN_SAMPLES
        held_lo, held_hi = self._held()
        missing = (end - start) - max(0, min(end, held_hi) - max(start, held_lo))
        samples = self._read(start, end)
        example = log_mel_frames(samples)[None]
        return AudioWindow(example=example, start=origin + start / SAMPLE_RATE, end=origin + end / SAMPLE_RATE,
                           missing=missing / SAMPLE_RATE)

    def covers(self, timestamp: float) -> bool:
        """Whether every sample of the example for a frame at ``timestamp`` has arrived."""
        if self.origin is None:
            return False
        return example_end_sample(timestamp - self.origin) <= self._written

    def _start_rate(self, rate: float) -> None:
        self._rate = rate
        self._in_count = 0
        self._resampler = None
        if rate != SAMPLE_RATE:
            self._resampler = StreamResampler(rate, SAMPLE_RATE)

    def _align(self, mono: np.ndarray, timestamp: float, rate: float) -> np.ndarray:
        expected = self._in_start + self._in_count / rate
        offset = timestamp - expected
        if offset > self.gap_tolerance:
            gap = int(round(offset * rate))
            self.gaps += 1
            self.gap_seconds += gap / rate
            self._in_count += gap
            self._append(self._resample(np.zeros(gap, dtype=np.float64)))
        elif offset < -self.gap_tolerance:
            overlap = min(int(round(-offset * rate)), mono.size)
            self.dropped_seconds += overlap / rate
            mono = mono[overlap:]
        return mono

    def _resample(self, mono: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            return mono
        return self._resampler.push(mono)

    def _drain(self) -> None:
        if self._resampler is not None:
            self._append(self._resampler.flush())

    def _append(self, samples16k: np.ndarray) -> None:
        if samples16k.size > self.capacity:
            self._written += samples16k.size - self.capacity
            samples16k = samples16k[-self.capacity:]
        pos = self._written % self.capacity
        first = min(samples16k.size, self.capacity - pos)
        self._ring[pos:pos + first] = samples16k[:first]
        self._ring[:samples16k.size - first] = samples16k[first:]
        self._written += samples16k.size

    def _held(self) -> tuple[int, int]:
        """Absolute index range ``[lo, hi)`` of the samples still in the ring."""
        return max(0, self._written - self.capacity), self._written

    def _read(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` by absolute index; those not held (any more, or yet) are zeros."""
        out = np.zeros(end - start, dtype=np.float64)
        held_lo, held_hi = self._held()
        lo, hi = max(start, held_lo), min(end, held_hi)
        if lo < hi:
            out[lo - start:hi - start] = self._ring[np.arange(lo, hi) % self.capacity]
        return out


class FrameHistory(Generic[T]):
    """Per-frame items (the encoder's small per-frame outputs) of recent frames; picks each frame's window.

    ``add(timestamp, item)`` records a frame; ``window(timestamp)`` returns the items of the window ending at the
    frame at ``timestamp`` (oldest first, that frame last), following the module docstring's rule.
    """

    def __init__(self, size: int, rate_hz: float, tolerance: Optional[float] = None):
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"window size must be an int >= 1; got {size!r}")
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be finite and > 0; got {rate_hz!r}")
        self.size = size
        self.period = 1.0 / rate_hz
        self.tolerance = 0.5 * self.period if tolerance is None else float(tolerance)
        self._times: list[float] = []
        self._items: list[T] = []

    def __len__(self) -> int:
        return len(self._times)

    def add(self, timestamp: float, item: T) -> None:
        """Record a frame (timestamps must not go backwards; an equal timestamp replaces the entry)."""
        if self._times and timestamp < self._times[-1]:
            raise ValueError(f"frame timestamp {timestamp} is older than the previous one ({self._times[-1]}); "
                             "timestamps must not go backwards (use one monotonic clock)")
        if self._times and timestamp == self._times[-1]:
            self._items[-1] = item
        else:
            self._times.append(timestamp)
            self._items.append(item)
        horizon = timestamp - (self.size - 1) * self.period - self.tolerance
        keep = next((i for i, t in enumerate(self._times) if t > horizon), len(self._times))
        del self._times[:keep], self._items[:keep]

    def window_times(self, timestamp: float) -> list[float]:
        """Timestamps of the frames in the window ending at ``timestamp`` (oldest first)."""
        return [self._times[i] for i in self._window_indices(timestamp)]

    def window(self, timestamp: float) -> list[T]:
        """Items of the window ending at the frame at ``timestamp`` (oldest first)."""
        return [self._items[i] for i in self._window_indices(timestamp)]

    def _window_indices(self, timestamp: float) -> list[int]:
        if not self._times or self._times[-1] != timestamp:
            raise KeyError(f"no frame at {timestamp} was added (the newest is "
                           f"{self._times[-1] if self._times else 'none'}); add() it before asking for its window")
        picked = [len(self._times) - 1]
        for k in range(1, self.size):
            slot = timestamp - k * self.period
            best = None
            for i in range(picked[-1] - 1, -1, -1):
                t = self._times[i]
                if t <= slot - self.tolerance:
                    break
                if t <= slot + self.tolerance and (best is None or abs(t - slot) < abs(self._times[best] - slot)):
                    best = i
            if best is None:
                break
            picked.append(best)
        return picked[::-1]
