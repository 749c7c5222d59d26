"""Band-limited resampling equal to resampy's ``kaiser_best``: the resampler the official VGGish front-end used.

torchvggish resamples non-16 kHz audio with ``resampy.resample(x, sr, 16000)`` (filter ``kaiser_best``; see
shared/specs/upstream-code.md section 1.1). This module computes the same output in plain numpy, with no numba:

* the filter is the right wing of a Kaiser-windowed sinc, ``rolloff * sinc(rolloff * u) * kaiser(u)`` for
  ``u`` in [0, ``NUM_ZEROS``] sampled ``2**PRECISION`` times per zero crossing (``kaiser_best_table``);
* output sample ``t`` sits at input time ``t * sr_in / sr_out``; its weights are read from the table by linear
  interpolation at the fractional position, one tap every ``int(scale * 2**PRECISION)`` entries, where
  ``scale = min(1, sr_out / sr_in)`` (downsampling also scales the filter by ``sr_out / sr_in``); taps past
  either end of the signal read zeros. Positions are computed in float64 exactly as resampy does, so the rare
  outputs whose input index lands on a rounding boundary get resampy's weights too;
* the output has ``int(len(x) * sr_out / sr_in)`` samples.

``resample`` does a whole signal; :class:`StreamResampler` does a live stream block by block and gives the same
samples, each emitted once the ``latency_samples`` input samples after it have arrived (about 3 ms), the rest on
``flush()``. Both accept whole-number rates in Hz (8000, 22050, 44100, 48000, 96000, ...).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

__all__ = ["NUM_ZEROS", "PRECISION", "ROLLOFF", "BETA", "kaiser_best_table", "resample", "StreamResampler"]

# resampy's kaiser_best parameters. Its docs print them rounded (rolloff 0.917347, beta 12.9846); these are the
# full-precision values its shipped table was built with (tests/test_resample.py checks the table to 1e-14).
NUM_ZEROS = 50
PRECISION = 13  # 2**13 table entries per zero crossing
ROLLOFF = 0.9173473712608761
BETA = 12.984585247042016

# Phases whose weights are precomputed (rows x taps); rarer rate pairs compute weights per output sample.
MAX_PHASE_TABLE = 1 << 22
# Output samples computed per vectorised step (bounds the temporary [rows, taps] arrays to a few MB).
CHUNK_ROWS = 2048


@functools.lru_cache(maxsize=None)
def kaiser_best_table() -> np.ndarray:
    """Right wing of the ``kaiser_best`` filter: ``NUM_ZEROS * 2**PRECISION + 1`` values (read-only, float64)."""
    n = NUM_ZEROS * 2 ** PRECISION
    sinc = ROLLOFF * np.sinc(ROLLOFF * np.linspace(0.0, NUM_ZEROS, n + 1))
    table = np.kaiser(2 * n + 1, BETA)[n:] * sinc
    table.setflags(write=False)
    return table


def _check_rate(name: str, rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be a positive number of samples per second (e.g. 44100); got {rate!r}")
    if rate != int(rate):
        raise ValueError(f"{name} must be a whole number of Hz (e.g. 44100, 48000); got {rate!r}: "
                         "round a measured device rate to its nominal value")
    return int(rate)


def _check_signal(x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise ValueError(f"expected a 1-D numpy array of samples; got {getattr(x, 'shape', type(x).__name__)} "
                         "(mix channels to mono first, e.g. runtime.audio.to_mono)")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"samples must be real numbers; got dtype {x.dtype}")
    return x.astype(np.float64, copy=False)


class _Kernel:
    """The interpolation for one rate pair: output samples ``[t0, t1)`` of a signal known from index ``first``."""

    def __init__(self, sr_in: int, sr_out: int):
        self.ratio = float(sr_out) / sr_in
        self.sr_in, self.sr_out = sr_in, sr_out
        self.increment = 1.0 / self.ratio
        self.scale = min(1.0, self.ratio)
        self.table_step = 2 ** PRECISION
        window = kaiser_best_table()
        if self.ratio < 1:
            window = self.ratio * window
        self.window = window
        self.delta = np.diff(window, append=window[-1])
        self.tap_step = int(self.scale * self.table_step)
        self.taps = window.size // self.tap_step  # most taps on either wing
        g = math.gcd(sr_in, sr_out)
        self.period_out, self.period_in = sr_out // g, sr_in // g
        self._phases = None
        if self.period_out * 2 * self.taps <= MAX_PHASE_TABLE:
            n, off_l, eta_l, off_r, eta_r = self._locate(np.arange(self.period_out))
            self._phases = n, off_l, off_r, self._taps(off_l, eta_l, off_r, eta_r)

    def output_length(self, num_inputs: int) -> int:
        """Samples out for ``num_inputs`` samples in (resampy's rule, float arithmetic included)."""
        return int(num_inputs * float(self.sr_out) / float(self.sr_in))

    def input_index(self, t: np.ndarray) -> np.ndarray:
        """Index of the input sample at or before output ``t`` (its left wing's first tap)."""
        return (t * self.increment).astype(np.int64)

    def _locate(self, t: np.ndarray) -> tuple[np.ndarray, ...]:
        """Input index ``n`` of outputs ``t``, and the table offset and fraction of each wing (resampy's float math)."""
        time = t * self.increment
        n = time.astype(np.int64)
        frac = self.scale * (time - n)
        left = frac * self.table_step
        right = (self.scale - frac) * self.table_step
        off_l, off_r = left.astype(np.int64), right.astype(np.int64)
        return n, off_l, left - off_l, off_r, right - off_r

    def _wing(self, offset: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Weights of taps 0 .. taps-1 of one wing, ``window[o + i step] + eta delta[o + i step]`` (0 past its end)."""
        i = np.arange(self.taps)
        index = offset[:, None] + i * self.tap_step
        valid = i < ((self.window.size - offset) // self.tap_step)[:, None]
        index = np.where(valid, index, 0)
        return np.where(valid, self.window[index] + eta[:, None] * self.delta[index], 0.0)

    def _taps(self, off_l, eta_l, off_r, eta_r) -> np.ndarray:
        """``[rows, 2 taps]`` weights over inputs ``n-taps+1 .. n+taps``: the left wing reversed, then the right."""
        return np.concatenate([self._wing(off_l, eta_l)[:, ::-1], self._wing(off_r, eta_r)], axis=1)

    def _weights(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input index and weights of outputs ``t``; from the phase table where it holds them."""
        n, off_l, eta_l, off_r, eta_r = self._locate(t)
        if self._phases is None:
            return n, self._taps(off_l, eta_l, off_r, eta_r)
        phase_n, phase_l, phase_r, phase_w = self._phases
        q, p = np.divmod(t, self.period_out)
        weights = phase_w[p]
        # Float rounding moves some outputs across an input or table index (at some rate pairs, e.g. 66600 Hz):
        # those get resampy's own weights. Elsewhere the table's differ from resampy's by float rounding only.
        odd = (n != q * self.period_in + phase_n[p]) | (off_l != phase_l[p]) | (off_r != phase_r[p])
        if odd.any():
            weights[odd] = self._taps(off_l[odd], eta_l[odd], off_r[odd], eta_r[odd])
        return n, weights

    def run(self, x: np.ndarray, first: int, t0: int, t1: int) -> np.ndarray:
        """Outputs ``[t0, t1)`` from ``x`` holding input samples ``first .. first+len(x)-1`` (zeros elsewhere)."""
        out = np.empty(max(0, t1 - t0), dtype=np.float64)
        if out.size == 0:
            return out
        width = 2 * self.taps
        lo = int(self.input_index(np.array([t0]))[0]) - self.taps + 1
        hi = int(self.input_index(np.array([t1 - 1]))[0]) + self.taps + 1
        padded = np.zeros(hi - lo, dtype=np.float64)
        a, b = max(lo, first), min(hi, first + x.size)
        if a < b:
            padded[a - lo:b - lo] = x[a - first:b - first]
        rows = np.lib.stride_tricks.sliding_window_view(padded, width)
        for start in range(t0, t1, CHUNK_ROWS):
            t = np.arange(start, min(t1, start + CHUNK_ROWS))
            n, weights = self._weights(t)
            # One fixed-order dot product per output row, so a stream in any blocking equals the batch bit for bit.
            out[start - t0:start - t0 + t.size] = np.einsum("ij,ij->i", rows[n - self.taps + 1 - lo], weights)
        return out


@functools.lru_cache(maxsize=4)  # each holds ~7 MB (the scaled table and its differences)
def _kernel(sr_in: int, sr_out: int) -> _Kernel:
    return _Kernel(sr_in, sr_out)


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """``x`` (1-D) resampled from ``sr_in`` to ``sr_out`` Hz, float64: ``resampy.resample(x, sr_in, sr_out,
    filter='kaiser_best')`` in numpy. A copy when the rates are equal; empty when the output has no sample
    (where resampy raises)."""
    sr_in, sr_out = _check_rate("sr_in", sr_in), _check_rate("sr_out", sr_out)
    x = _check_signal(x)
    if sr_in == sr_out:
        return x.copy()
    kernel = _kernel(sr_in, sr_out)
    return kernel.run(x, 0, 0, kernel.output_length(x.size))


class StreamResampler:
    """``resample`` for a stream: ``push`` blocks of any size, then ``flush()`` at the end of input.

    The concatenated outputs equal ``resample`` of the whole input. An output sample is emitted once the
    ``latency_samples`` input samples after its position have arrived (about 3 ms of audio at any rate); the
    rest come from ``flush()``, which reads zeros past the end as ``resample`` does. Memory is bounded: only the
    input samples still needed are kept.
    """

    def __init__(self, sr_in: float, sr_out: float):
        self.sr_in, self.sr_out = _check_rate("sr_in", sr_in), _check_rate("sr_out", sr_out)
        self._kernel = None if self.sr_in == self.sr_out else _kernel(self.sr_in, self.sr_out)
        self._buffer = np.zeros(0, dtype=np.float64)
        self._first = 0  # absolute input index of _buffer[0]
        self._received = 0
        self._emitted = 0
        self._flushed = False

    @property
    def latency_samples(self) -> int:
        """Input samples that must follow an output's position before ``push`` emits it (0 at equal rates)."""
        return 0 if self._kernel is None else self._kernel.taps

    @property
    def buffered_samples(self) -> int:
        """Input samples held for outputs not yet emitted."""
        return self._buffer.size

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed a 1-D block; returns the output samples it completes (float64, possibly none)."""
        if self._flushed:
            raise RuntimeError("push() after flush(): this stream has ended; create a new StreamResampler")
        x = _check_signal(x)
        self._received += x.size
        if self._kernel is None:
            self._emitted += x.size
            return x.copy()
        self._buffer = np.concatenate([self._buffer, x])
        return self._emit(self._ready())

    def flush(self) -> np.ndarray:
        """End of input: the remaining output samples. The stream then ends."""
        if self._flushed:
            raise RuntimeError("flush() called twice: this stream has ended; create a new StreamResampler")
        self._flushed = True
        if self._kernel is None:
            return np.zeros(0, dtype=np.float64)
        return self._emit(self._kernel.output_length(self._received))

    def _ready(self) -> int:
        """One past the last output whose right wing lies inside the input received so far."""
        kernel = self._kernel
        limit = self._received - 1 - kernel.taps  # the newest input index an emitted output may sit at
        if limit < 0:
            return self._emitted
        guess = -(-(limit + 1) * kernel.period_out // kernel.period_in)  # first output past limit, exactly
        t = np.arange(max(self._emitted, guess - 2), guess + 3)
        return int(t[np.searchsorted(kernel.input_index(t), limit, side="right")])

    def _emit(self, t1: int) -> np.ndarray:
        kernel = self._kernel
        out = kernel.run(self._buffer, self._first, self._emitted, t1)
        self._emitted = max(self._emitted, t1)
        keep_from = int(kernel.input_index(np.array([self._emitted]))[0]) - kernel.taps
        drop = min(max(0, keep_from - self._first), self._buffer.size)
        self._buffer = self._buffer[drop:].copy()
        self._first += drop
        return out
