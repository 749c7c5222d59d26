"""VGGish log-mel front-end in numpy, for whole clips and for a live microphone stream.

Reproduces the front-end that AVSBench-derived models (SelM, COMBO, ...) were trained with (torchvggish's
``waveform_to_examples``; see shared/specs/upstream-code.md section 1.1):

* samples: integer PCM is scaled to [-1, 1) by its full range (int16 / 32768.0 as the official code does; other
  signed widths by 2**(bits-1); unsigned PCM is offset-binary, centred first); float input is taken as already in
  [-1, 1] and kept as is;
* channels: ``(samples,)`` or ``(samples, channels)`` as soundfile returns them, mixed to mono by the mean;
* resampling to 16 kHz with resampy's ``kaiser_best`` filter, as the official code did, reimplemented in numpy
  (``runtime.resample``; equal to resampy to about 1e-11, see tests/test_resample.py);
* periodic Hann window of 400 samples, hop 160, FFT 512, no padding or centring, magnitude spectrum;
* 64 HTK-mel bands, 125-7500 Hz: bin frequencies linspace(0, 8000, 257), 66 band edges linearly spaced in mel,
  triangles linear in the mel domain, DC bin weight 0, no area normalisation; then ``log(mel + 0.01)``;
* non-overlapping examples of 96 frames; a partial example at the end is dropped.

Timing convention. STFT frame ``j`` reads 16 kHz samples ``[160 j, 160 j + 400)``. Example ``k`` holds frames
``96 k .. 96 k + 95`` and so reads samples ``[15360 k, 15360 k + 15600)``: examples start every
``EXAMPLE_SECONDS`` = 0.96 s and each reads ``EXAMPLE_SPAN_SAMPLES`` = 15600 samples (0.975 s). A video frame at
time ``t`` takes "the 0.96 s of audio ending at t": the 96 newest frames whose windows end at or before ``t``
(``example_frame_range(t)`` offline, ``LogMelStream.latest_example()`` live).

Short input is not an error: a signal shorter than one example gives zero examples (shape ``[0, 1, 96, 64]``);
one shorter than one window gives zero frames. (The official code returns zero examples down to 400 samples and
fails inside numpy below that.)
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from runtime.resample import StreamResampler, resample

__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "HOP_SAMPLES",
    "FFT_LENGTH",
    "NUM_MEL_BANDS",
    "MEL_MIN_HZ",
    "MEL_MAX_HZ",
    "LOG_OFFSET",
    "EXAMPLE_FRAMES",
    "EXAMPLE_SECONDS",
    "EXAMPLE_HOP_SAMPLES",
    "EXAMPLE_SPAN_SAMPLES",
    "MAX_CHANNELS",
    "FLOAT_PEAK_LIMIT",
    "hann_window",
    "mel_matrix",
    "to_mono",
    "resample_to_16k",
    "log_mel_frames",
    "waveform_to_examples",
    "example_frame_range",
    "LogMelStream",
]

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96
EXAMPLE_SECONDS = EXAMPLE_FRAMES * HOP_SAMPLES / SAMPLE_RATE  # 0.96: start-to-start distance of examples
EXAMPLE_HOP_SAMPLES = EXAMPLE_FRAMES * HOP_SAMPLES  # 15360
EXAMPLE_SPAN_SAMPLES = WINDOW_SAMPLES + (EXAMPLE_FRAMES - 1) * HOP_SAMPLES  # 15600: samples one example reads
# A (samples, channels) array wider than this is almost surely (channels, samples): refuse it.
MAX_CHANNELS = 32
# Float audio is expected in [-1, 1]; a peak above this is integer PCM stored as float, not clipping.
FLOAT_PEAK_LIMIT = 2.0


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=None)
def hann_window() -> np.ndarray:
    """Periodic Hann window of ``WINDOW_SAMPLES`` points, 0.5 - 0.5 cos(2 pi n / N) (read-only, float64)."""
    n = np.arange(WINDOW_SAMPLES, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / WINDOW_SAMPLES)
    window.setflags(write=False)
    return window


@functools.lru_cache(maxsize=None)
def mel_matrix() -> np.ndarray:
    """``[257, 64]`` weights mapping magnitude-spectrum bins to HTK mel bands (read-only, float64)."""
    bin_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT_LENGTH // 2 + 1))
    edges = np.linspace(_hz_to_mel(MEL_MIN_HZ), _hz_to_mel(MEL_MAX_HZ), NUM_MEL_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=None)
def _mel_bands() -> tuple[tuple[int, int, np.ndarray], ...]:
    """Each band's nonzero bin range ``(lo, hi)`` and its weights there."""
    bands = []
    for column in mel_matrix().T:
        nonzero = np.flatnonzero(column)
        lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
        bands.append((lo, hi, column[lo:hi].copy()))
    return tuple(bands)


def _project_to_mel(spectrum: np.ndarray) -> np.ndarray:
    """``spectrum [n, 257] @ mel_matrix()``, row by row in a fixed order.

    A BLAS matrix product may round a row differently depending on how many rows it is given; summing each band
    over its own bins keeps every frame's value independent of the batch, so streaming equals batch bit for bit.
    """
    mel = np.empty((spectrum.shape[0], NUM_MEL_BANDS), dtype=np.float64)
    for band, (lo, hi, weights) in enumerate(_mel_bands()):
        mel[:, band] = (spectrum[:, lo:hi] * weights).sum(axis=1)
    return mel


def _num_frames(num_samples: int) -> int:
    return 0 if num_samples < WINDOW_SAMPLES else 1 + (num_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def _log_mel(mono16k: np.ndarray, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` log-mel frames of a mono float64 16 kHz signal, float32 ``[num_frames, 64]``."""
    if num_frames == 0:
        return np.zeros((0, NUM_MEL_BANDS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(mono16k, WINDOW_SAMPLES)[::HOP_SAMPLES][:num_frames]
    spectrum = np.abs(np.fft.rfft(frames * hann_window(), FFT_LENGTH))
    return np.log(_project_to_mel(spectrum) + LOG_OFFSET).astype(np.float32)


def _check_sample_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise ValueError(f"sample_rate must be a number of samples per second; got {sample_rate!r}")
    rate = float(sample_rate)
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"sample_rate must be finite and > 0 (e.g. 16000, 44100, 48000); got {sample_rate!r}")
    if rate != int(rate):
        raise ValueError(f"sample_rate must be a whole number of Hz (e.g. 44100, 48000); got {sample_rate!r}: "
                         "round a measured device rate to its nominal value")
    return rate


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Scale ``waveform`` to float64 in [-1, 1] (integer PCM by its full range) and mix channels to mono.

    Accepts ``(samples,)`` or ``(samples, channels)``. Raises ``TypeError`` for a non-array and ``ValueError`` for
    an unsupported dtype, a wrong rank, a channels-first array, non-finite samples or a float signal far outside
    [-1, 1].
    """
    if not isinstance(waveform, np.ndarray):
        raise TypeError(f"waveform must be a numpy array; got {type(waveform).__name__} (wrap it in np.asarray "
                        "with an explicit dtype: int16 PCM or float in [-1, 1])")
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform must be (samples,) or (samples, channels); got shape {waveform.shape}")
    if waveform.ndim == 2:
        channels = waveform.shape[1]
        if channels == 0:
            raise ValueError(f"waveform has no channels: shape {waveform.shape}")
        if channels > MAX_CHANNELS:
            raise ValueError(f"waveform shape {waveform.shape} reads as {channels} channels; "
                             "expected (samples, channels): pass waveform.T if it is channels-first")
    kind = waveform.dtype.kind
    if kind == "i":
        full_scale = float(2 ** (8 * waveform.dtype.itemsize - 1))
        samples = waveform.astype(np.float64) / full_scale
    elif kind == "u":
        half = float(2 ** (8 * waveform.dtype.itemsize - 1))
        samples = (waveform.astype(np.float64) - half) / half
    elif kind == "f":
        samples = waveform.astype(np.float64)
        if not np.isfinite(samples).all():
            raise ValueError("waveform has NaN or infinite samples; clean the signal (e.g. np.nan_to_num) first")
        peak = float(np.abs(samples).max(initial=0.0))
        if peak > FLOAT_PEAK_LIMIT:
            raise ValueError(f"float waveform peaks at {peak:g}, expected samples in [-1, 1]; integer PCM stored as "
                             "float must be divided by its full scale (32768 for 16-bit) or passed as int16")
    else:
        raise ValueError(f"waveform dtype {waveform.dtype} is not audio: pass integer PCM or float in [-1, 1]")
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample_to_16k(mono: np.ndarray, sample_rate: float) -> np.ndarray:
    """Resample a mono float64 signal to ``SAMPLE_RATE`` (resampy ``kaiser_best``; identity when already at 16 kHz).

    The rate must be a whole number of Hz."""
    rate = _check_sample_rate(sample_rate)
    if rate == SAMPLE_RATE or mono.size == 0:
        return mono
    return resample(mono, rate, SAMPLE_RATE)


def log_mel_frames(waveform16k: np.ndarray) -> np.ndarray:
    """All log-mel STFT frames of a 16 kHz waveform: float32 ``[frames, 64]``, frames = 1 + (N - 400) // 160.

    Takes the same sample conventions as ``waveform_to_examples`` (see ``to_mono``).
    """
    mono = to_mono(waveform16k)
    return _log_mel(mono, _num_frames(mono.size))


def waveform_to_examples(waveform: np.ndarray, sample_rate: float) -> np.ndarray:
    """VGGish input examples of a waveform: float32 ``[N, 1, 96, 64]``, N = complete 0.96-s examples.

    ``waveform`` is ``(samples,)`` or ``(samples, channels)``, integer PCM or float in [-1, 1], at any
    whole-number ``sample_rate`` (resampled to 16 kHz). A partial example at the end is dropped; short input gives
    N = 0.
    """
    rate = _check_sample_rate(sample_rate)
    mono16k = resample_to_16k(to_mono(waveform), rate)
    frames = _log_mel(mono16k, _num_frames(mono16k.size))
    count = frames.shape[0] // EXAMPLE_FRAMES
    return frames[: count * EXAMPLE_FRAMES].reshape(count, 1, EXAMPLE_FRAMES, NUM_MEL_BANDS)


def example_frame_range(end_seconds: float) -> slice:
    """The 96 frames (rows of ``log_mel_frames``) forming "the 0.96 s of audio ending at ``end_seconds``".

    These are the newest 96 frames whose windows end at or before ``end_seconds`` (rounded to a 16 kHz sample);
    together they read the ``EXAMPLE_SPAN_SAMPLES`` samples ending at the last one's window end.
    Raises ``ValueError`` when fewer than ``EXAMPLE_SPAN_SAMPLES`` samples precede ``end_seconds``.
    """
    end_sample = int(round(float(end_seconds) * SAMPLE_RATE))
    if end_sample < EXAMPLE_SPAN_SAMPLES:
        raise ValueError(f"an example needs {EXAMPLE_SPAN_SAMPLES / SAMPLE_RATE:g} s of audio before its end; "
                         f"got end_seconds={end_seconds!r}")
    last = (end_sample - WINDOW_SAMPLES) // HOP_SAMPLES
    return slice(last - EXAMPLE_FRAMES + 1, last + 1)


class LogMelStream:
    """Incremental ``waveform_to_examples`` for a live source: push chunks, get examples as they complete.

    Keeps only the 16 kHz samples not yet framed (< 400) and the newest 96 log-mel frames, so memory is bounded
    and no frame is computed twice. Concatenated over any chunking, ``push`` outputs followed by ``flush()`` equal
    ``waveform_to_examples`` of the whole signal, bit for bit (``runtime.resample.StreamResampler`` equals the
    batch resampler exactly). At rates other than 16 kHz the resampler holds back about 3 ms of audio (half its
    filter) until more input or ``flush()`` arrives.
    """

    def __init__(self, sample_rate: float):
        self.sample_rate = _check_sample_rate(sample_rate)
        self._resampler = None
        if self.sample_rate != SAMPLE_RATE:
            self._resampler = StreamResampler(self.sample_rate, SAMPLE_RATE)
        self._samples = np.zeros(0, dtype=np.float64)
        self._frames = np.zeros((0, NUM_MEL_BANDS), dtype=np.float32)
        self._frames_done = 0
        self._examples_done = 0
        self._flushed = False

    @property
    def frames_done(self) -> int:
        """STFT frames computed so far; the newest one's window ends at 16 kHz sample 160 (frames_done - 1) + 400."""
        return self._frames_done

    @property
    def examples_done(self) -> int:
        """Examples returned so far (example k reads 16 kHz samples [15360 k, 15360 k + 15600))."""
        return self._examples_done

    @property
    def buffered_samples(self) -> int:
        """16 kHz samples waiting for the next frame (always < ``WINDOW_SAMPLES``)."""
        return self._samples.size

    @property
    def buffered_frames(self) -> int:
        """Log-mel frames kept for the next example and ``latest_example`` (at most ``EXAMPLE_FRAMES``)."""
        return self._frames.shape[0]

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed a chunk (same conventions as ``waveform_to_examples``); returns the ``[k, 1, 96, 64]`` examples
        completed by it, k >= 0."""
        if self._flushed:
            raise RuntimeError("push() after flush(): this stream has ended; create a new LogMelStream")
        mono = to_mono(samples)
        if self._resampler is not None:
            mono = self._resampler.push(mono)
        return self._consume(mono)

    def flush(self) -> np.ndarray:
        """End of input: drain the resampler and return the examples that completes. The stream then ends."""
        if self._flushed:
            raise RuntimeError("flush() called twice: this stream has ended; create a new LogMelStream")
        self._flushed = True
        if self._resampler is None:
            return self._consume(np.zeros(0, dtype=np.float64))
        return self._consume(self._resampler.flush())

    def latest_example(self) -> np.ndarray | None:
        """The newest 96 frames as one example ``[1, 96, 64]`` (the audio ending at the newest frame's window end),
        or ``None`` before 96 frames exist. Unlike ``push``, this is not tied to the 0.96-s example grid."""
        if self._frames.shape[0] < EXAMPLE_FRAMES:
            return None
        return self._frames[-EXAMPLE_FRAMES:][None].copy()

    def _consume(self, mono16k: np.ndarray) -> np.ndarray:
        buffer = np.concatenate([self._samples, mono16k])
        count = _num_frames(buffer.size)
        if count:
            self._frames = np.concatenate([self._frames, _log_mel(buffer, count)])
            self._frames_done += count
            buffer = buffer[count * HOP_SAMPLES:]
        self._samples = buffer.copy()

        first_kept = self._frames_done - self._frames.shape[0]
        examples = []
        while (self._examples_done + 1) * EXAMPLE_FRAMES <= self._frames_done:
            start = self._examples_done * EXAMPLE_FRAMES - first_kept
            examples.append(self._frames[start:start + EXAMPLE_FRAMES])
            self._examples_done += 1
        out = np.stack(examples) if examples else np.zeros((0, EXAMPLE_FRAMES, NUM_MEL_BANDS), dtype=np.float32)
        # Everything after the last emitted example is fewer than 96 frames, so the newest 96 cover it.
        self._frames = self._frames[-EXAMPLE_FRAMES:].copy()
        return out[:, None]
