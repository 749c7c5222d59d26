"""runtime.sync: the audio paired with each frame and the temporal window (pure logic, no devices)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.audio import EXAMPLE_SPAN_SAMPLES, HOP_SAMPLES, SAMPLE_RATE, waveform_to_examples
from runtime.sync import AudioTimeline, FrameHistory, example_end_sample, training_timestamps

HOP_S = HOP_SAMPLES / SAMPLE_RATE


def _noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def _push_chunked(timeline: AudioTimeline, signal: np.ndarray, rate: int, start: float, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    pos = 0
    while pos < signal.shape[0]:
        size = int(rng.integers(1, 2000))
        timeline.push(signal[pos:pos + size], rate, start + pos / rate)
        pos += size


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_training_pairing_equals_waveform_to_examples(rate):
    """Frames at training_timestamps get exactly VGGish example i of the clip, whatever the chunking and rate."""
    signal = _noise(5.2, rate)
    examples = waveform_to_examples(signal, rate)
    timeline = AudioTimeline()
    _push_chunked(timeline, signal, rate, start=50.0)
    stamps = 50.0 + training_timestamps(examples.shape[0])
    for i, t in enumerate(stamps):
        window = timeline.window(t)
        assert np.array_equal(window.example, examples[i]), f"example {i} differs"
        assert window.missing == 0.0
        assert window.end == pytest.approx(t)


def test_tone_onset_lands_within_one_hop():
    """A tone starting at a known time shows up where the frame's window says it should, within one 10 ms hop."""
    rate, onset = 48000, 1.2345
    t = np.arange(int(3.0 * rate)) / rate
    signal = np.where(t >= onset, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
    clock0 = 1000.0
    timeline = AudioTimeline()
    _push_chunked(timeline, signal, rate, start=clock0)
    for frame_time in np.arange(1.30, 2.15, 0.0333):
        window = timeline.window(clock0 + frame_time)
        assert frame_time - HOP_S < window.end - clock0 <= frame_time + 1e-9
        loud = np.flatnonzero(window.example[0].max(axis=1) > np.log(0.01) + 3.0)
        if frame_time - onset < 0.025:
            continue
        # Frame j's 25 ms window starts at start + j * 10 ms; the first loud frame must contain the onset.
        first_start = window.start - clock0 + loud[0] * HOP_S
        assert onset - 0.025 - HOP_S <= first_start <= onset + 1e-9, (frame_time, loud[:3])
        expected_first = int(np.ceil((onset - 0.025 - (window.start - clock0)) / HOP_S))
        assert abs(int(loud[0]) - expected_first) <= 1


def test_gap_is_silence_and_overlap_is_dropped():
    rate = 16000
    timeline = AudioTimeline()
    ones = np.full(16000, 0.5, dtype=np.float32)
    timeline.push(ones, rate, 10.0)
    timeline.push(ones, rate, 11.5)  # 0.5 s lost (e.g. an input overflow)
    assert timeline.gaps == 1 and timeline.gap_seconds == pytest.approx(0.5)
    assert timeline.end_time == pytest.approx(12.5)
    timeline.push(ones, rate, 12.25)  # 0.25 s overlaps what we have
    assert timeline.dropped_seconds == pytest.approx(0.25)
    assert timeline.end_time == pytest.approx(13.25)
    timeline.push(ones[:160], rate, 13.25 + 0.005)  # jitter below the tolerance: contiguous
    assert timeline.gaps == 1 and timeline.end_time == pytest.approx(13.26)
    samples = timeline._read(0, timeline._written)
    assert np.all(samples[16000:24000] == 0.0) and np.all(samples[:16000] == 0.5) and np.all(samples[24000:] == 0.5)


def test_missing_audio_is_reported_and_silent():
    timeline = AudioTimeline(capacity_seconds=2.0)
    assert not timeline.covers(5.0)
    silence = timeline.window(5.0)
    assert silence.missing == pytest.approx(EXAMPLE_SPAN_SAMPLES / SAMPLE_RATE)
    assert np.allclose(silence.example, np.log(0.01))
    timeline.push(_noise(3.0, 16000), 16000, 0.0)
    assert timeline.covers(2.9) and not timeline.covers(3.1)
    assert timeline.window(2.9).missing == 0.0
    assert timeline.window(0.5).missing > 0  # before the origin
    assert timeline.window(1.2).missing > 0  # fell out of the 2 s ring
    assert timeline.window(3.5).missing == pytest.approx(0.5, abs=HOP_S)  # not arrived yet
    assert -30 < timeline.level_dbfs() < -10


def test_rate_change_keeps_the_clock():
    timeline = AudioTimeline()
    timeline.push(_noise(1.0, 48000), 48000, 0.0)
    timeline.push(_noise(1.0, 16000), 16000, 1.0)
    assert timeline.end_time == pytest.approx(2.0, abs=1e-3)
    assert timeline.gaps == 0 and timeline.dropped_seconds == 0.0


def test_bad_audio_input_is_named():
    timeline = AudioTimeline()
    with pytest.raises(ValueError, match="sample_rate"):
        timeline.push(np.zeros(10, np.float32), 0, 0.0)
    with pytest.raises(ValueError, match="timestamp"):
        timeline.push(np.zeros(10, np.float32), 16000, float("nan"))
    with pytest.raises(ValueError, match="channels-first"):
        timeline.push(np.zeros((2, 1000), np.float32), 16000, 0.0)


def test_example_end_sample_snaps_to_the_hop_grid():
    assert example_end_sample(0.975) == EXAMPLE_SPAN_SAMPLES
    assert example_end_sample(0.984) == EXAMPLE_SPAN_SAMPLES
    assert example_end_sample(0.985) == EXAMPLE_SPAN_SAMPLES + HOP_SAMPLES


def test_window_at_display_rate_spaces_frames_one_period_apart():
    history: FrameHistory[int] = FrameHistory(size=5, rate_hz=1.0)
    stamps = 100.0 + np.arange(0, 8, 1 / 30)
    for i, t in enumerate(stamps):
        history.add(float(t), i)
    newest = float(stamps[-1])
    times = history.window_times(newest)
    assert len(times) == 5
    assert np.allclose(np.diff(times), 1.0, atol=1 / 60 + 1e-9)
    assert history.window(newest)[-1] == len(stamps) - 1
    assert len(history) <= 4 * 30 + 16  # old frames are pruned


def test_window_is_short_at_start_and_after_a_gap():
    history: FrameHistory[str] = FrameHistory(size=5, rate_hz=1.0)
    history.add(0.0, "a")
    assert history.window(0.0) == ["a"]
    history.add(1.1, "b")
    history.add(2.0, "c")
    assert history.window(2.0) == ["a", "b", "c"]
    history.add(4.0, "d")  # nothing near 3.0: the clip restarts after the gap
    assert history.window(4.0) == ["d"]


def test_training_spacing_fills_the_window():
    history: FrameHistory[int] = FrameHistory(size=5, rate_hz=1.0)
    for i, t in enumerate(training_timestamps(7)):
        history.add(float(t), i)
        assert history.window(float(t)) == list(range(max(0, i - 4), i + 1))


def test_history_rejects_time_going_backwards_and_unknown_frames():
    history: FrameHistory[int] = FrameHistory(size=3, rate_hz=1.0)
    history.add(5.0, 0)
    with pytest.raises(ValueError, match="backwards"):
        history.add(4.0, 1)
    with pytest.raises(KeyError, match="add"):
        history.window(6.0)
    with pytest.raises(ValueError, match="rate_hz"):
        FrameHistory(size=3, rate_hz=0.0)


def test_tone_onset_in_a_real_clip_within_one_hop(tmp_path):
    """The same check through an mp4 (AAC audio, H.264 video) decoded by the runtime's own readers."""
    from runtime.capture import VideoSource
    from runtime.demo_clip import make_clip
    from runtime.microphone import TrackAudio

    onset = 1.2345
    clip = make_clip(tmp_path / "tone.mp4", seconds=3.0, fps=10, width=64, height=48, sample_rate=48000,
                     tone_onset=onset)
    timeline = AudioTimeline()
    with TrackAudio(clip.path) as track:
        while not track.finished:
            for chunk in track.read():
                timeline.push(chunk.samples, chunk.sample_rate, chunk.timestamp)
            track.wait(0.05)
    with VideoSource(clip.path) as video:
        stamps = []
        while video.is_streaming():
            frame = video.read(timeout=2.0)
            if frame is not None:
                stamps.append(frame.timestamp)
    checked = 0
    for t in stamps:
        if not onset + 0.03 < t < onset + 0.9:
            continue
        window = timeline.window(t)
        assert window.missing == 0.0 and t - HOP_S < window.end <= t + 1e-9
        loud = np.flatnonzero(window.example[0].max(axis=1) > np.log(0.01) + 3.0)
        expected_first = int(np.ceil((onset - 0.025 - window.start) / HOP_S))
        assert abs(int(loud[0]) - expected_first) <= 1, (t, loud[:3], expected_first)
        checked += 1
    assert checked >= 8
