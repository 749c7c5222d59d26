"""runtime.resample against resampy's kaiser_best (the official VGGish front-end's resampler): the filter table,
batch output at the rates microphones and files use, streaming == batch in any blocking, and bad-input errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from runtime.resample import StreamResampler, kaiser_best_table, resample

resampy = pytest.importorskip("resampy")


def _signal(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """White noise, a 50 Hz - 7.9 kHz chirp and tones up to 7.9 kHz."""
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(0.05 * np.sin(2 * np.pi * f * t + f) for f in (220.0, 1234.0, 6950.0, 7900.0))
    chirp = 0.2 * scipy.signal.chirp(t, 50.0, seconds, 7900.0)
    return 0.05 * np.random.default_rng(seed).standard_normal(t.size) + chirp + tones


def _official(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    return resampy.resample(x, sr_in, sr_out, filter="kaiser_best")


def test_table_is_resampys_kaiser_best():
    half_window, precision, rolloff = resampy.filters.get_filter("kaiser_best")
    table = kaiser_best_table()
    assert table.shape == half_window.shape and int(precision) == 2 ** 13
    np.testing.assert_allclose(table, half_window, rtol=0, atol=1e-14)
    assert table[0] == pytest.approx(float(rolloff), abs=1e-15)


@pytest.mark.parametrize("sr_in, sr_out", [(8000, 16000), (22050, 16000), (32000, 16000), (44100, 16000),
                                           (48000, 16000), (96000, 16000), (16000, 44100), (44100, 48000),
                                           (44101, 16000), (66600, 16000)])
def test_batch_equals_resampy(sr_in, sr_out):
    # 44101 Hz has too many phases to precompute (the per-sample path); at 66600 Hz float rounding moves one output
    # in 80 across an input index (from output 240 on), where resampy's weights differ from the phase table's.
    x = _signal(sr_in, 0.4 if sr_in == 44101 else 1.0)
    expected = _official(x, sr_in, sr_out)
    got = resample(x, sr_in, sr_out)
    assert got.shape == expected.shape and got.dtype == np.float64
    # Measured <= 8e-12 of the peak: only float rounding (summation order, phase-table reuse) differs.
    assert np.abs(got - expected).max() < 1e-9 * np.abs(expected).max()


@pytest.mark.parametrize("length", [1, 2, 3, 150, 301, 1001])
def test_short_and_odd_lengths_equal_resampy(length):
    x = np.random.default_rng(length).standard_normal(length)
    got = resample(x, 48000, 16000)
    if length < 3:
        assert got.shape == (0,)  # resampy refuses an empty output; we return one
        return
    np.testing.assert_allclose(got, _official(x, 48000, 16000), rtol=0, atol=1e-12)


def test_integer_input_and_equal_rates():
    pcm = (np.random.default_rng(1).standard_normal(4410) * 3000).astype(np.int16)
    np.testing.assert_allclose(resample(pcm, 44100, 16000), _official(pcm.astype(np.float64), 44100, 16000),
                               rtol=0, atol=1e-8)
    x = _signal(16000, 0.1)
    same = resample(x, 16000, 16000.0)
    np.testing.assert_array_equal(same, x)
    assert same is not x


def _stream(resampler: StreamResampler, x: np.ndarray, sizes) -> tuple[np.ndarray, int]:
    """Push ``x`` in blocks of ``sizes`` (cycled); returns all output and the largest input buffer seen."""
    outputs, start, held, i = [], 0, 0, 0
    while start < x.size:
        block = x[start:start + sizes[i % len(sizes)]]
        out = resampler.push(block)
        start, i = start + block.size, i + 1
        outputs.append(out)
        held = max(held, resampler.buffered_samples)
        # Everything whose right wing has arrived is out: the lag is the filter's half length, no more.
        lagging = int(max(0, start - resampler.latency_samples - 1) * resampler.sr_out / resampler.sr_in)
        assert sum(o.size for o in outputs) >= lagging
    outputs.append(resampler.flush())
    return np.concatenate(outputs), held


@pytest.mark.parametrize("sr_in", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("sizes", [[1, 7, 441, 4097, 13], [480]])
def test_stream_equals_batch(sr_in, sizes):
    x = _signal(sr_in, 0.3 if 1 in sizes else 1.0, seed=sr_in)
    streamed, held = _stream(StreamResampler(sr_in, 16000), x, sizes)
    np.testing.assert_array_equal(streamed, resample(x, sr_in, 16000))
    assert held <= 2 * StreamResampler(sr_in, 16000).latency_samples + 2 + max(sizes)


def test_stream_latency_is_a_few_milliseconds():
    for rate in (22050, 44100, 48000, 96000):
        stream = StreamResampler(rate, 16000)
        assert 0.002 < stream.latency_samples / rate < 0.004
    assert StreamResampler(16000, 16000).latency_samples == 0


def test_stream_at_equal_rates_passes_samples_through():
    stream = StreamResampler(16000, 16000)
    x = _signal(16000, 0.05)
    np.testing.assert_array_equal(stream.push(x), x)
    assert stream.flush().size == 0


@pytest.mark.parametrize("rate, match", [(0, "positive"), (-44100, "positive"), (float("nan"), "positive"),
                                         (True, "positive"), ("44100", "positive"), (44100.5, "whole number")])
def test_bad_rates_are_refused(rate, match):
    with pytest.raises(ValueError, match=match):
        resample(np.zeros(100), rate, 16000)
    with pytest.raises(ValueError, match=match):
        StreamResampler(16000, rate)


@pytest.mark.parametrize("x, match", [(np.zeros((100, 2)), "1-D"), ([0.0, 1.0], "1-D"),
                                      (np.zeros(10, dtype=np.complex64), "real numbers")])
def test_bad_signals_are_refused(x, match):
    with pytest.raises(ValueError, match=match):
        resample(x, 44100, 16000)


def test_stream_refuses_use_after_flush():
    stream = StreamResampler(44100, 16000)
    stream.push(np.zeros(1000))
    stream.flush()
    with pytest.raises(RuntimeError, match="new StreamResampler"):
        stream.push(np.zeros(10))
    with pytest.raises(RuntimeError, match="flush\\(\\) called twice"):
        stream.flush()
