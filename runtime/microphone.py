"""Audio inputs: a microphone through sounddevice (PortAudio), or the audio track of a file or URL through PyAV.

Both deliver :class:`AudioChunk` s (samples at the source's own rate and channel count, with the clock time of the
first sample), which :class:`AudioPump` hands to the consumers (segmenter, mp4) in step with the video;
``runtime.sync.AudioTimeline`` mixes them to mono and resamples them to 16 kHz. Device rates the model does not
use (44.1 kHz, 48 kHz, ...) are therefore fine: a microphone is opened at 16 kHz when it supports that, else at its
default rate.

:class:`Microphone` copies each PortAudio block into a ring buffer from the audio callback (no allocation, a short
lock, never blocking on the reader) and stamps it on ``time.monotonic()`` from the stream's ADC time: the first
block's ADC time anchors a sample clock (``anchor + n / rate``), re-anchored after an input overflow or when it
strays from the ADC time by more than ``resync`` seconds. Overflows (samples PortAudio lost) are counted, never
fatal. Samples are int16 (the PCM the model's front end was trained on; 16-bit capture also avoids a sample
loss seen with float capture through ALSA's plug layer). sounddevice is imported only when a microphone is used,
so ``import runtime`` works without PortAudio.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np

from runtime.audio import SAMPLE_RATE

__all__ = ["AudioChunk", "MicrophoneError", "NoAudioTrack", "InputDevice", "list_input_devices",
           "resolve_input_device", "choose_stream_settings", "Microphone", "TrackAudio", "AudioPump"]

BLOCK_SECONDS = 0.02
RING_SECONDS = 10.0
DEFAULT_RESYNC = 0.1
TRACK_READ_AHEAD = 30.0  # seconds of a file's audio decoded ahead of the consumer
AUDIO_LOOKAHEAD = 0.5  # seconds of a file's audio handed to the consumers beyond the current frame


class MicrophoneError(RuntimeError):
    """An audio input that cannot be used; the message names the fix (another device, --mic none, a package)."""


class NoAudioTrack(MicrophoneError):
    """The file or stream has no audio track (a caller may go on video-only)."""


@dataclass(frozen=True)
class AudioChunk:
    """Samples ``(n,)`` or ``(n, channels)`` at ``sample_rate``; ``timestamp`` is the first sample's clock time."""
    samples: np.ndarray
    sample_rate: int
    timestamp: float

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


@dataclass(frozen=True)
class InputDevice:
    """A PortAudio input device."""
    index: int
    name: str
    channels: int
    default_rate: float
    hostapi: str
    is_default: bool

    def __str__(self) -> str:
        mark = " (default)" if self.is_default else ""
        return f"[{self.index}] {self.name}{mark}, {self.channels} ch, {self.default_rate:g} Hz, {self.hostapi}"


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        raise MicrophoneError(f"cannot use a microphone: {exc} (install PortAudio: apt-get install libportaudio2; "
                              "or run video-only with --mic none)") from None
    return sounddevice


def list_input_devices() -> list[InputDevice]:
    """PortAudio's input devices (raises :class:`MicrophoneError` when PortAudio is missing)."""
    sd = _sounddevice()
    devices = sd.query_devices()
    hostapis = sd.query_hostapis()
    default = sd.default.device[0] if sd.default.device else -1
    return [InputDevice(d["index"], d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]),
                        hostapis[d["hostapi"]]["name"], d["index"] == default)
            for d in devices if d["max_input_channels"] > 0]


def _device_help(devices: list[InputDevice]) -> str:
    listing = "; ".join(str(d) for d in devices) if devices else "none found"
    return f"input devices: {listing}. Choose one with --mic NAME|INDEX, or run video-only with --mic none"


def resolve_input_device(spec: Union[str, int, None] = "default") -> InputDevice:
    """The device for ``default``, an index, or a name: exact, else case-insensitive, else a unique part of one."""
    devices = list_input_devices()
    text = "default" if spec is None else str(spec).strip()
    if text == "default":
        chosen = [d for d in devices if d.is_default]
        if not chosen:
            raise MicrophoneError(f"no default microphone on this machine; {_device_help(devices)}")
        return chosen[0]
    if text.lstrip("-").isdigit():
        chosen = [d for d in devices if d.index == int(text)]
        if not chosen:
            raise MicrophoneError(f"no input device with index {text}; {_device_help(devices)}")
        return chosen[0]
    exact = [d for d in devices if d.name == text] or [d for d in devices if d.name.lower() == text.lower()]
    partial = exact or [d for d in devices if text.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise MicrophoneError(f"no input device named {text!r}; {_device_help(devices)}")
    raise MicrophoneError(f"{text!r} matches several input devices ({', '.join(d.name for d in partial)}); "
                          "give the full name or the index")


def choose_stream_settings(device: InputDevice, supported: Callable[[float, int], bool],
                           sample_rate: Optional[float] = None) -> tuple[float, int]:
    """(rate, channels) to open ``device`` with: the requested rate, else 16 kHz, else the device's default rate;
    mono when the device allows it, else its channel count up to 2 (mixed down later)."""
    rates = [sample_rate] if sample_rate else [float(SAMPLE_RATE), device.default_rate]
    for rate in rates:
        for channels in sorted({1, min(2, device.channels), device.channels}):
            if supported(rate, channels):
                return rate, channels
    raise MicrophoneError(f"input device {device.name!r} accepts none of the rates "
                          f"{', '.join(f'{r:g}' for r in rates)} Hz; choose another with --mic")


class Microphone:
    """A live microphone; see the module docstring.

    Args:
        device: ``"default"``, an index or a name (``resolve_input_device``).
        sample_rate: force a rate (default: 16 kHz if supported, else the device's default rate).
        resync: re-anchor the sample clock when it strays this far (seconds) from the ADC time; None never
            (a source not paced in real time, such as a file-fed test device).
        ring_seconds: audio kept for the reader; older samples are overwritten (counted in ``reader_overruns``).
    """

    def __init__(self, device: Union[str, int, None, InputDevice] = "default", sample_rate: Optional[float] = None,
                 resync: Optional[float] = DEFAULT_RESYNC, ring_seconds: float = RING_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.device = device if isinstance(device, InputDevice) else resolve_input_device(device)
        self._requested_rate = sample_rate
        self.resync = resync
        self.ring_seconds = float(ring_seconds)
        self._clock = clock
        self.sample_rate: int = 0
        self.channels = 0
        self.overflows = 0
        self.reader_overruns = 0
        self._stream = None
        self._lock = threading.Lock()
        self._ring = np.zeros((0, 1), np.int16)
        self._written = 0
        self._read_pos = 0
        self._anchors: list[tuple[int, float]] = []  # (absolute sample index, clock time) where the clock restarts
        self._status_error: Optional[str] = None

    @property
    def name(self) -> str:
        return self.device.name

    def start(self) -> "Microphone":
        """Open the input stream and start capturing (raises :class:`MicrophoneError`)."""
        sd = _sounddevice()

        def supported(rate: float, channels: int) -> bool:
            try:
                sd.check_input_settings(device=self.device.index, samplerate=rate, channels=channels,
                                        dtype="int16")
                return True
            except Exception:  # noqa: BLE001  (PortAudio reports unsupported settings with various errors)
                return False

        rate, channels = choose_stream_settings(self.device, supported, self._requested_rate)
        self._allocate(int(round(rate)), channels)
        try:
            self._stream = sd.InputStream(device=self.device.index, samplerate=self.sample_rate,
                                          channels=self.channels, dtype="int16",
                                          blocksize=int(BLOCK_SECONDS * self.sample_rate), callback=self._callback)
            self._stream.start()
        except Exception as exc:  # noqa: BLE001  (PortAudioError and friends)
            raise MicrophoneError(f"cannot open input device {self.device.name!r}: {exc}; "
                                  "choose another with --mic, or run video-only with --mic none") from None
        return self

    def _allocate(self, sample_rate: int, channels: int) -> None:
        self.sample_rate, self.channels = sample_rate, channels
        self._ring = np.zeros((int(self.ring_seconds * sample_rate), channels), np.int16)

    def read(self) -> list[AudioChunk]:
        """The audio captured since the previous call, as chunks with contiguous sample clocks."""
        with self._lock:
            start, end = self._read_pos, self._written
            if end - start > self._ring.shape[0]:
                self.reader_overruns += 1
                start = end - self._ring.shape[0]
            self._read_pos = end
            anchors = list(self._anchors)
            self._anchors = [a for a in anchors if a[0] >= end] or anchors[-1:]
            data = self._ring[np.arange(start, end) % self._ring.shape[0]] if end > start else None
        if data is None:
            return []
        cuts = sorted({start, end, *(i for i, _ in anchors if start < i < end)})
        chunks = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            index, at = max((a for a in anchors if a[0] <= lo), default=anchors[0])
            samples = data[lo - start:hi - start]
            chunks.append(AudioChunk(samples[:, 0] if self.channels == 1 else samples, self.sample_rate,
                                     at + (lo - index) / self.sample_rate))
        return chunks

    def close(self) -> None:
        """Stop and close the stream."""
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            finally:
                self._stream = None

    def __enter__(self) -> "Microphone":
        return self.start() if self._stream is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        """PortAudio's audio thread: stamp the block, copy it into the ring; nothing that can block for long."""
        now = self._clock()
        adc, current = getattr(time_info, "inputBufferAdcTime", 0.0), getattr(time_info, "currentTime", 0.0)
        adc_time = now - (current - adc) if adc > 0 and current > 0 else now - frames / self.sample_rate
        overflow = bool(getattr(status, "input_overflow", False))
        with self._lock:
            if overflow:
                self.overflows += 1
            if not self._anchors:
                self._anchors.append((self._written, adc_time))
            else:
                index, at = self._anchors[-1]
                expected = at + (self._written - index) / self.sample_rate
                if overflow or (self.resync is not None and abs(expected - adc_time) > self.resync):
                    self._anchors.append((self._written, adc_time))
            size = self._ring.shape[0]
            pos = self._written % size
            first = min(frames, size - pos)
            self._ring[pos:pos + first] = indata[:first]
            self._ring[:frames - first] = indata[first:]
            self._written += frames


class TrackAudio:
    """The audio track of a file (presentation times) or URL (arrival times) decoded by PyAV in a thread.

    ``read()`` returns the chunks decoded so far; ``available_until`` is the clock time just after the newest one
    and ``finished`` tells the track has ended. A file is decoded up to ``TRACK_READ_AHEAD`` seconds ahead.
    """

    def __init__(self, uri: str, live: bool = False, clock: Callable[[], float] = time.monotonic):
        self.uri, self.live, self._clock = str(uri), bool(live), clock
        self.sample_rate = 0
        self.channels = 0
        self.available_until = -math.inf
        self.error: Optional[str] = None
        self._container = None
        self._queue: queue.Queue = queue.Queue()
        self._queued_seconds = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def finished(self) -> bool:
        """True when the whole track has been decoded and read (or the reader failed)."""
        return self._done.is_set() and self._queue.empty()

    def start(self) -> "TrackAudio":
        """Open the track (raises :class:`MicrophoneError` when there is none) and start decoding."""
        import av

        try:
            self._container = av.open(self.uri, timeout=10.0 if self.live else None)
        except (av.error.FFmpegError, OSError) as exc:
            raise MicrophoneError(f"cannot open {self.uri} for its audio: {exc}") from None
        if not self._container.streams.audio:
            self._container.close()
            raise NoAudioTrack(f"{self.uri} has no audio track; run video-only with --mic none (silence) or "
                                  "take audio from a microphone with --mic NAME|INDEX|default")
        stream = self._container.streams.audio[0]
        self.sample_rate = int(stream.rate)
        self.channels = min(2, max(1, stream.codec_context.channels))
        self._thread = threading.Thread(target=self._run, args=(stream,), name=f"audio:{self.uri}", daemon=True)
        self._thread.start()
        return self

    def read(self) -> list[AudioChunk]:
        """Chunks decoded since the previous call (never blocks)."""
        chunks = []
        while True:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                break
            chunks.append(chunk)
        if chunks:
            with self._cond:
                self._queued_seconds -= sum(c.duration for c in chunks)
                self._cond.notify_all()
        return chunks

    def wait(self, timeout: float) -> None:
        """Sleep until more audio is decoded, the track ends, or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait(timeout)

    def close(self) -> None:
        """Stop decoding and close the file."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "TrackAudio":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, stream) -> None:
        import av

        layout = "mono" if self.channels == 1 else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=self.sample_rate)
        try:
            for frame in self._container.decode(stream):
                start = frame.time
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().T.copy()
                    if self.live or start is None:
                        start = self._clock() - samples.shape[0] / self.sample_rate
                    self._put(AudioChunk(samples[:, 0] if self.channels == 1 else samples, self.sample_rate,
                                         start))
                    start += samples.shape[0] / self.sample_rate
                if self._stop.is_set():
                    break
        except (av.error.FFmpegError, OSError) as exc:
            self.error = f"{self.uri}: audio stopped: {exc}"
        finally:
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def _put(self, chunk: AudioChunk) -> None:
        with self._cond:
            while not self.live and self._queued_seconds > TRACK_READ_AHEAD and not self._stop.is_set():
                self._cond.wait(0.1)
            self._queued_seconds += chunk.duration
            self.available_until = chunk.timestamp + chunk.duration
            self._queue.put(chunk)
            self._cond.notify_all()


AudioSink = Callable[[np.ndarray, int, float], None]


class AudioPump:
    """Moves audio from its source (a :class:`Microphone`, a :class:`TrackAudio` or None for silence) to
    ``sinks`` (``sink(samples, sample_rate, timestamp)``, e.g. ``Segmenter.push_audio`` and ``Outputs.add_audio``).

    A file's track is handed over only up to ``AUDIO_LOOKAHEAD`` seconds past the frame being segmented, split
    mid-chunk when needed, so the consumers always hold the audio of the frames to come and no more. A new input
    overflow count is reported once through ``say``.
    """

    def __init__(self, source, sinks: list[AudioSink], say: Callable[[str], None] = print):
        self.source, self.sinks, self.say = source, list(sinks), say
        self._held: list[AudioChunk] = []
        self.until = -math.inf
        self.overflows = 0

    def pump(self, until: float = math.inf) -> None:
        """Hand over what has arrived, up to clock time ``until``."""
        if self.source is None:
            return
        self._held.extend(self.source.read())
        while self._held and self._held[0].timestamp < until:
            chunk = self._held.pop(0)
            end = chunk.timestamp + chunk.duration
            if end > until and math.isfinite(until):
                keep = max(1, int(round((until - chunk.timestamp) * chunk.sample_rate)))
                if keep < chunk.samples.shape[0]:
                    self._held.insert(0, AudioChunk(chunk.samples[keep:], chunk.sample_rate,
                                                    chunk.timestamp + keep / chunk.sample_rate))
                chunk = AudioChunk(chunk.samples[:keep], chunk.sample_rate, chunk.timestamp)
                end = chunk.timestamp + chunk.duration
            for sink in self.sinks:
                sink(chunk.samples, chunk.sample_rate, chunk.timestamp)
            self.until = max(self.until, end)
        overflows = getattr(self.source, "overflows", 0)
        if overflows > self.overflows:
            self.overflows = overflows
            self.say(f"audio: input overflow ({overflows} so far): samples were lost and replaced by silence; "
                     "continuing")

    def pump_file_until(self, timestamp: float, timeout: float = 10.0) -> None:
        """File track: decode until the audio reaches ``timestamp`` + the look-ahead (or the track ends), then
        hand it over."""
        deadline = time.monotonic() + timeout
        while (self.source is not None and self.source.available_until < timestamp + AUDIO_LOOKAHEAD
               and not self.source.finished and time.monotonic() < deadline):
            self.source.wait(0.05)
        self.pump(timestamp + AUDIO_LOOKAHEAD)

    def wait_live(self, timestamp: float, timeout: float) -> None:
        """Live source: pump until the audio reaches ``timestamp`` or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        self.pump()
        while self.source is not None and self.until < timestamp and time.monotonic() < deadline:
            time.sleep(0.005)
            self.pump()
