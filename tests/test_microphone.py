"""runtime.microphone: a file-fed fake microphone through ALSA into sounddevice, device choice, file audio tracks.

The fake microphone is ALSA's ``file`` plugin (shared/notes/platform.md): it delivers the file's samples as fast as
they are read, not in real time, so these tests count samples and never wall-clock time. PortAudio reads
``~/.asoundrc`` when sounddevice is imported, so each case runs in a subprocess with its own HOME.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from runtime.audio import waveform_to_examples
from runtime.demo_clip import make_clip, synth_audio
from runtime.microphone import (AudioChunk, AudioPump, InputDevice, Microphone, MicrophoneError, NoAudioTrack,
                                TrackAudio, choose_stream_settings)
from runtime.sync import AudioTimeline, training_timestamps

REPO = Path(__file__).resolve().parents[1]

ASOUNDRC = """
pcm.filemic {{
    type file
    slave.pcm "null"
    infile "{infile}"
    file "/dev/null"
    format "raw"
}}
pcm.mic {{
    type plug
    slave {{ pcm "filemic" format S16_LE rate {rate} channels 1 }}
    hint {{ show on description "file-fed test microphone" }}
}}
"""


def _fake_mic_home(tmp_path: Path, signal: np.ndarray, rate: int) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    infile = tmp_path / "mic.raw"
    signal.astype("<i2").tofile(infile)
    (home / ".asoundrc").write_text(ASOUNDRC.format(infile=infile, rate=rate))
    return home


def _run(home: Path, code: str) -> subprocess.CompletedProcess:
    pytest.importorskip("sounddevice", exc_type=OSError)
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


CAPTURE = """
    import json, sys, time
    import numpy as np
    from runtime.microphone import Microphone
    want = int(sys.argv[1]) if len(sys.argv) > 1 else {want}
    chunks = []
    # The device is not paced: a 10-minute ring keeps the start while this loop polls every 5 ms.
    with Microphone("mic", sample_rate={rate}, resync=None, ring_seconds=600) as mic:
        deadline = time.monotonic() + 60
        while sum(c.samples.shape[0] for c in chunks) < want and time.monotonic() < deadline:
            chunks.extend(mic.read())
            time.sleep(0.005)
        info = dict(rate=mic.sample_rate, channels=mic.channels, overflows=mic.overflows, name=mic.name,
                    overruns=mic.reader_overruns)
    samples = np.concatenate([c.samples for c in chunks])[:want]
    np.save("{out}", samples)
    starts = [c.timestamp for c in chunks]
    ends = [c.timestamp + c.duration for c in chunks]
    info["contiguous"] = bool(np.allclose(starts[1:], ends[:-1], atol=1e-9))
    print(json.dumps(info))
"""


@pytest.mark.parametrize("rate", [16000, 44100])
def test_fake_microphone_delivers_the_file_exactly(tmp_path, rate):
    seconds = 2.0
    rng = np.random.default_rng(rate)
    signal = (rng.standard_normal(int(seconds * rate)) * 3000).clip(-32768, 32767).astype(np.int16)
    home = _fake_mic_home(tmp_path, signal, rate)
    out = tmp_path / "got.npy"
    result = _run(home, CAPTURE.format(want=signal.size, rate=rate, out=out))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info == {"rate": rate, "channels": 1, "overflows": 0, "name": "mic", "overruns": 0,
                    "contiguous": True}
    got = np.load(out)
    assert got.dtype == np.int16 and np.array_equal(got, signal)
    # Through the timeline (resampled to 16 kHz when needed) it is exactly the clip's VGGish input.
    timeline = AudioTimeline()
    timeline.push(got, rate, 0.0)
    examples = waveform_to_examples(got, rate)
    for i, t in enumerate(training_timestamps(examples.shape[0])):
        assert np.array_equal(timeline.window(t).example, examples[i])


def test_missing_microphone_is_named(tmp_path):
    home = tmp_path / "empty"
    home.mkdir()
    (home / ".asoundrc").write_text("# no devices\n")
    result = _run(home, """
        from runtime.microphone import Microphone, MicrophoneError
        for spec in ("default", "usb-mic", "7"):
            try:
                Microphone(spec)
            except MicrophoneError as exc:
                print(exc)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("no default microphone on this machine")
    assert "no input device named 'usb-mic'" in lines[1] and "no input device with index 7" in lines[2]
    assert all("--mic none" in line for line in lines)


def test_devices_are_listed_and_found_by_name(tmp_path):
    home = _fake_mic_home(tmp_path, np.zeros(16000, np.int16), 16000)
    result = _run(home, """
        from runtime.microphone import list_input_devices, resolve_input_device, MicrophoneError
        print([d.name for d in list_input_devices()])
        print(resolve_input_device("MIC").name, resolve_input_device("1").index, resolve_input_device().is_default)
        try:
            resolve_input_device("i")
        except MicrophoneError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    names, found, ambiguous = result.stdout.strip().splitlines()
    assert "'mic'" in names and "'filemic'" in names
    assert found == "mic 1 True"
    assert "matches several input devices" in ambiguous


def _device(rate=48000.0, channels=2):
    return InputDevice(0, "usb", channels, rate, "ALSA", True)


def test_stream_settings_prefer_16k_mono_then_the_device_rate():
    assert choose_stream_settings(_device(), lambda r, c: True) == (16000.0, 1)
    assert choose_stream_settings(_device(), lambda r, c: r == 48000.0) == (48000.0, 1)
    assert choose_stream_settings(_device(), lambda r, c: r == 48000.0 and c == 2) == (48000.0, 2)
    assert choose_stream_settings(_device(), lambda r, c: True, sample_rate=22050) == (22050, 1)
    with pytest.raises(MicrophoneError, match="accepts none of the rates 16000, 48000 Hz"):
        choose_stream_settings(_device(), lambda r, c: False)


def test_callback_counts_overflows_and_restarts_the_clock_after_one():
    """PortAudio's callback side: ADC time stamps, overflow counting, re-anchoring (called directly)."""
    now = [0.0]
    mic = Microphone(_device(16000.0, 1), clock=lambda: now[0])
    mic._allocate(16000, 1)
    block = np.ones((320, 1), np.int16)
    ok = SimpleNamespace(input_overflow=False)
    for i in range(5):
        now[0] = 100.0 + 0.02 * (i + 1) + 0.005
        mic._callback(block * i, 320, SimpleNamespace(inputBufferAdcTime=50.0 + 0.02 * i,
                                                      currentTime=50.0 + 0.02 * (i + 1) + 0.005), ok)
    chunks = mic.read()
    assert len(chunks) == 1 and chunks[0].samples.shape == (1600,)
    assert chunks[0].timestamp == pytest.approx(100.0)  # the first sample's ADC time on the monotonic clock
    # 100 ms of audio lost: PortAudio flags the overflow and the clock restarts at the next block's ADC time.
    now[0] = 100.225
    mic._callback(block, 320, SimpleNamespace(inputBufferAdcTime=50.2, currentTime=50.225),
                  SimpleNamespace(input_overflow=True))
    now[0] = 100.245
    mic._callback(block, 320, SimpleNamespace(inputBufferAdcTime=50.22, currentTime=50.245), ok)
    chunks = mic.read()
    assert mic.overflows == 1
    assert [c.timestamp for c in chunks] == [pytest.approx(100.2)]
    assert chunks[0].samples.shape == (640,)
    # A host that reports no ADC time: stamped from the callback time minus the block's duration.
    now[0] = 100.3
    mic._callback(block, 320, SimpleNamespace(inputBufferAdcTime=0.0, currentTime=0.0), ok)
    assert mic.read()[0].timestamp == pytest.approx(100.24)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("mic") / "clip.mp4", seconds=3.0, fps=5, width=160, height=120)


def test_file_audio_track_is_decoded_with_presentation_times(clip):
    with TrackAudio(clip.path) as track:
        chunks = []
        while not track.finished:
            chunks.extend(track.read())
            track.wait(0.05)
    assert track.sample_rate == clip.sample_rate and track.channels == clip.channels
    assert chunks[0].timestamp == pytest.approx(0.0, abs=1e-3)
    starts = np.array([c.timestamp for c in chunks])
    assert np.allclose(starts[1:], starts[:-1] + [c.duration for c in chunks[:-1]], atol=1e-4)
    audio = np.concatenate([c.samples for c in chunks])
    reference = synth_audio(clip.seconds, clip.sample_rate, clip.channels)
    n = min(audio.shape[0], reference.shape[0])
    assert n >= reference.shape[0] - 1
    corr = np.corrcoef(audio[:n, 0], reference[:n, 0])[0, 1]
    assert corr > 0.95, corr  # AAC is lossy but not misaligned: a shift of 1 ms would decorrelate the harmonics


def test_file_without_audio_is_named(tmp_path):
    from runtime.render import Mp4Writer

    path = tmp_path / "silent.mp4"
    with Mp4Writer(path) as writer:
        for i in range(3):
            writer.add_frame(np.zeros((32, 32, 3), np.uint8), i / 10)
    with pytest.raises(NoAudioTrack, match="run video-only with --mic none"):
        TrackAudio(path).start()


def test_audio_chunk_duration():
    assert AudioChunk(np.zeros((4800, 2), np.float32), 48000, 1.0).duration == pytest.approx(0.1)


def test_audio_pump_reports_overflows_and_holds_back_future_audio():
    """Overflows are reported once per new count without stopping; a file's audio is handed over only up to
    the frame being segmented (plus a look-ahead), split mid-chunk when needed, to every sink alike."""
    source = SimpleNamespace(overflows=0, chunks=[AudioChunk(np.zeros(1600, np.int16), 16000, 0.0),
                                                  AudioChunk(np.zeros(1600, np.int16), 16000, 0.1)])
    source.read = lambda: [source.chunks.pop(0)] if source.chunks else []
    lines, first, second = [], [], []
    pump = AudioPump(source, [lambda s, r, t: first.append((s.shape[0], r, t)),
                              lambda s, r, t: second.append((s.shape[0], r, t))], lines.append)
    pump.pump(until=0.05)
    assert first == [(800, 16000, 0.0)] and pump.until == pytest.approx(0.05)
    source.overflows = 2
    pump.pump()
    assert [p[0] for p in first] == [800, 800, 1600] and second == first
    assert pump.until == pytest.approx(0.2)
    assert lines == ["audio: input overflow (2 so far): samples were lost and replaced by silence; continuing"]
    pump.pump()
    assert len(lines) == 1
