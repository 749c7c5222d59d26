"""runtime.audio against an independent log-mel (scipy STFT + a mel matrix built by interpolation from librosa's
HTK band edges), plus sample conventions, streaming == batch, and bad-input errors."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from runtime import audio

librosa = pytest.importorskip("librosa")


def _independent_mel_matrix() -> np.ndarray:
    """torchvggish's mel weights from the definition, by a different route than runtime.audio.

    librosa's own ``filters.mel(htk=True)`` draws the triangles linearly in Hz (its weights differ from the
    mel-domain triangles by up to 4.4e-3), so only its HTK band edges are used here; the triangles are drawn
    by ``np.interp`` on librosa's (2595 log10) HTK scale, which is linear in ours.
    """
    edges = librosa.hz_to_mel(librosa.mel_frequencies(audio.NUM_MEL_BANDS + 2, fmin=audio.MEL_MIN_HZ,
                                                      fmax=audio.MEL_MAX_HZ, htk=True), htk=True)
    bins = librosa.hz_to_mel(librosa.fft_frequencies(sr=audio.SAMPLE_RATE, n_fft=audio.FFT_LENGTH), htk=True)
    weights = np.stack([np.interp(bins, edges[i:i + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0)
                        for i in range(audio.NUM_MEL_BANDS)], axis=1)
    weights[0] = 0.0
    return weights


def _independent_log_mel(mono16k: np.ndarray) -> np.ndarray:
    """scipy STFT (periodic Hann 400, hop 160, FFT 512, no padding), magnitude, mel, log(+0.01)."""
    window = scipy.signal.get_window("hann", 400, fftbins=True)
    _, _, stft = scipy.signal.stft(mono16k, window=window, nperseg=400, noverlap=240, nfft=512, boundary=None,
                                   padded=False, detrend=False)
    magnitude = np.abs(stft * window.sum()).T  # scipy scales the spectrum by 1 / sum(window)
    return np.log(magnitude @ _independent_mel_matrix() + 0.01)


def _test_signal(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Tones plus noise low-passed at 6 kHz, amplitude-modulated; float in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in [(0.2, 220, 0), (0.1, 1234, 1), (0.05, 3100, 2)])
    noise = scipy.signal.sosfilt(scipy.signal.butter(8, 6000, fs=rate, output="sos"), rng.standard_normal(t.size))
    return (tones + 0.05 * noise) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))


def test_mel_matrix_matches_definition():
    np.testing.assert_allclose(audio.mel_matrix(), _independent_mel_matrix(), rtol=0, atol=1e-12)
    assert not audio.mel_matrix()[0].any()


def test_window_is_periodic_hann():
    np.testing.assert_allclose(audio.hann_window(), scipy.signal.get_window("hann", 400, fftbins=True), atol=1e-15)


def test_log_mel_at_16k_matches_scipy():
    pcm = np.round(_test_signal(16000, 5.0) * 20000).astype(np.int16)
    expected = _independent_log_mel(pcm / 32768.0)
    frames = audio.log_mel_frames(pcm)
    assert frames.shape == (498, 64) and frames.dtype == np.float32  # 1 + (80000 - 400) // 160
    # Both sides compute in float64; the float32 result leaves about 1e-7 of rounding.
    np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-5)
    examples = audio.waveform_to_examples(pcm, 16000)
    assert examples.shape == (5, 1, 96, 64) and examples.dtype == np.float32
    np.testing.assert_array_equal(examples.reshape(-1, 64), frames[:480])


@pytest.mark.parametrize("rate", [44100, 48000])
def test_log_mel_resampled_matches_resample_poly(rate):
    wave = _test_signal(rate, 5.0)
    g = np.gcd(rate, 16000)
    expected = _independent_log_mel(scipy.signal.resample_poly(wave, 16000 // g, rate // g))
    got = audio.waveform_to_examples(wave, rate).reshape(-1, 64)
    assert got.shape == (480, 64)
    diff = np.abs(got - expected[:480])
    # Two different resamplers agree in their passbands (measured <= 2.1e-3 below 6.7 kHz, i.e. bands 0-60);
    # bands 61-63 (6.7-7.5 kHz) sit in their transition bands, which differ by design (measured <= 0.34).
    assert diff[:, :61].max() < 0.02
    assert diff.max() < 0.5


def _rich_signal(rate: int, seconds: float, seed: int = 7) -> np.ndarray:
    """White noise, a 50 Hz - 7.9 kHz chirp and tones up to 7.9 kHz (the top mel band's edge region included)."""
    t = np.arange(int(rate * seconds)) / rate
    chirp = scipy.signal.chirp(t, 50.0, seconds, 7900.0)
    tones = sum(0.05 * np.sin(2 * np.pi * f * t) for f in (440.0, 3000.0, 6950.0, 7300.0, 7900.0))
    return 0.05 * np.random.default_rng(seed).standard_normal(t.size) + 0.2 * chirp + tones


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_resampled_log_mel_matches_the_official_front_end(rate):
    """Non-16 kHz audio gives the log-mel of resampy kaiser_best's output (the official code's), on every band."""
    resampy = pytest.importorskip("resampy")
    wave = _rich_signal(rate, 3.0)
    official = _independent_log_mel(resampy.resample(wave, rate, 16000, filter="kaiser_best"))
    got = audio.waveform_to_examples(wave, rate).reshape(-1, 64)
    assert got.shape == (288, 64)
    diff = np.abs(got - official[:288]).max(axis=0)
    # Measured <= 2.4e-7 (float32 rounding) on every band, the top band (6.9-7.5 kHz) included.
    assert diff.max() < 2e-3, f"bands over 2e-3: {np.flatnonzero(diff >= 2e-3)}"


def test_integer_pcm_is_scaled_by_full_range():
    pcm16 = np.round(_test_signal(16000, 1.2, seed=2) * 30000).astype(np.int16)
    reference = audio.waveform_to_examples(pcm16 / 32768.0, 16000)
    np.testing.assert_array_equal(audio.waveform_to_examples(pcm16, 16000), reference)
    np.testing.assert_array_equal(audio.waveform_to_examples(pcm16.astype(np.int32) << 16, 16000), reference)
    pcm8 = (pcm16 >> 8).astype(np.int8)
    np.testing.assert_array_equal(audio.waveform_to_examples((pcm8.astype(np.int16) + 128).astype(np.uint8), 16000),
                                  audio.waveform_to_examples(pcm8.astype(np.float64) / 128.0, 16000))


def test_channels_are_mixed_by_mean():
    rng = np.random.default_rng(3)
    stereo = (rng.standard_normal((20000, 2)) * 3000).astype(np.int16)
    mono = stereo.astype(np.float64).mean(axis=1) / 32768.0
    got = audio.waveform_to_examples(stereo, 16000)
    assert got.shape == (1, 1, 96, 64)
    np.testing.assert_array_equal(got, audio.waveform_to_examples(mono, 16000))
    np.testing.assert_array_equal(audio.waveform_to_examples(stereo[:, :1], 16000),
                                  audio.waveform_to_examples(stereo[:, 0], 16000))


def _stream_all(stream: audio.LogMelStream, wave: np.ndarray, rng, max_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Push ``wave`` in random chunks; returns (examples before flush, all examples)."""
    outputs, start = [], 0
    while start < wave.shape[0]:
        size = int(rng.integers(1, max_chunk + 1))
        out = stream.push(wave[start:start + size])
        assert out.shape[1:] == (1, 96, 64) and out.dtype == np.float32
        outputs.append(out)
        start += size
    live = np.concatenate(outputs)
    return live, np.concatenate([live, stream.flush()])


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
@pytest.mark.parametrize("max_chunk", [37, 4000])
def test_stream_equals_batch(rate, max_chunk):
    rng = np.random.default_rng(rate + max_chunk)
    seconds = 1.5 if max_chunk < 100 else 6.0
    wave = np.round(_test_signal(rate, seconds, seed=4) * 20000).astype(np.int16)
    batch = audio.waveform_to_examples(wave, rate)
    live, everything = _stream_all(audio.LogMelStream(rate), wave, rng, max_chunk)
    np.testing.assert_array_equal(everything, batch)
    np.testing.assert_array_equal(live, batch[: live.shape[0]])
    if rate == 16000:
        assert live.shape == batch.shape  # no resampler delay


def test_stream_memory_is_bounded():
    stream = audio.LogMelStream(48000)
    wave = (np.random.default_rng(5).standard_normal(48000 * 20) * 0.1).astype(np.float32)
    produced = 0
    for start in range(0, wave.size, 1000):
        produced += stream.push(wave[start:start + 1000]).shape[0]
        assert stream.buffered_samples < audio.WINDOW_SAMPLES
        assert stream.buffered_frames <= audio.EXAMPLE_FRAMES
    assert produced == stream.examples_done >= 20


def test_latest_example_is_the_audio_ending_now():
    wave = _test_signal(16000, 3.3, seed=6)
    stream = audio.LogMelStream(16000)
    assert stream.push(wave[:15599]).shape[0] == 0 and stream.latest_example() is None
    stream.push(wave[15599:])
    frames = audio.log_mel_frames(wave)
    assert stream.frames_done == frames.shape[0]
    window = audio.example_frame_range(wave.size / 16000)
    np.testing.assert_array_equal(stream.latest_example(), frames[window][None])


def test_example_frame_range_follows_the_example_grid():
    span = audio.EXAMPLE_SPAN_SAMPLES / audio.SAMPLE_RATE  # 0.975 s
    assert audio.example_frame_range(span) == slice(0, 96)
    assert audio.example_frame_range(audio.EXAMPLE_SECONDS + span) == slice(96, 192)
    assert audio.example_frame_range(span + 0.0099) == slice(0, 96)  # next frame not complete yet
    assert audio.example_frame_range(span + 0.01) == slice(1, 97)
    with pytest.raises(ValueError, match="0.975 s of audio"):
        audio.example_frame_range(0.9)


@pytest.mark.parametrize("length, examples, frames", [(0, 0, 0), (399, 0, 0), (400, 0, 1), (15599, 0, 95),
                                                      (15600, 1, 96), (30959, 1, 191), (30960, 2, 192)])
def test_short_input_gives_no_examples(length, examples, frames):
    wave = np.zeros(length, dtype=np.int16)
    assert audio.waveform_to_examples(wave, 16000).shape == (examples, 1, 96, 64)
    assert audio.log_mel_frames(wave).shape == (frames, 64)


def test_short_input_at_other_rates():
    assert audio.waveform_to_examples(np.zeros(0, dtype=np.float32), 44100).shape == (0, 1, 96, 64)
    assert audio.waveform_to_examples(np.zeros((100, 2), dtype=np.int16), 48000).shape == (0, 1, 96, 64)


@pytest.mark.parametrize("wave, rate, error, match", [
    (np.array([0.0, np.nan, 0.0]), 16000, ValueError, "NaN or infinite"),
    (np.array([0.0, np.inf]), 16000, ValueError, "NaN or infinite"),
    (np.zeros((10, 2, 2)), 16000, ValueError, r"\(samples,\) or \(samples, channels\)"),
    (np.zeros((2, 48000)), 16000, ValueError, "channels-first"),
    (np.zeros((100, 0)), 16000, ValueError, "no channels"),
    (np.zeros(100, dtype=np.complex64), 16000, ValueError, "not audio"),
    (np.full(100, 1000.0), 16000, ValueError, "divided by its full scale"),
    ([0.0, 0.1], 16000, TypeError, "numpy array"),
    (np.zeros(100), 0, ValueError, "sample_rate"),
    (np.zeros(100), -44100, ValueError, "sample_rate"),
    (np.zeros(100), float("nan"), ValueError, "sample_rate"),
    (np.zeros(100), 44100.5, ValueError, "whole number of Hz"),
    (np.zeros(100), "16000", ValueError, "sample_rate"),
])
def test_bad_input_is_refused(wave, rate, error, match):
    with pytest.raises(error, match=match):
        audio.waveform_to_examples(wave, rate)


def test_stream_refuses_bad_input_and_use_after_flush():
    with pytest.raises(ValueError, match="sample_rate"):
        audio.LogMelStream(0)
    stream = audio.LogMelStream(48000)
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream.push(np.array([np.nan], dtype=np.float32))
    stream.flush()
    with pytest.raises(RuntimeError, match="new LogMelStream"):
        stream.push(np.zeros(10, dtype=np.int16))
