"""``Segmenter``: frames and audio in, masks out, for one artifact directory (driven by its manifest.json alone).

Live use: ``push_audio`` and ``push_frame`` from any threads, ``latest()`` for the newest result. A worker thread
segments the newest pushed frame once the audio up to its timestamp has arrived (or ``audio_wait`` seconds have
passed); frames pushed while it is busy are replaced by newer ones (``stats['dropped']``), so results never lag
behind a backlog. ``segment(image, timestamp)`` does the same work synchronously in the caller's thread, and
``segment_clip(frames, waveform, sample_rate)`` segments a whole recorded clip.

Per frame, through the streaming split of the artifact (the schedule is documented in README):

1. the frame (resized to the model's resolution, RGB, normalised as in the manifest) and the log-mel example of
   the 0.96 s of audio ending at its timestamp go through the **encoder** once; its small per-frame outputs
   (``manifest.streaming.carry``) are cached in a :class:`runtime.sync.FrameHistory`;
2. the **temporal** graph runs on the window of up to T cached frames spaced 1 / ``frame_rate_hz`` apart ending at
   this frame. A causal model (SelM, SDAVS) gets them at the start of its T slots, the rest zero, so row k-1 is
   exactly the output for a clip of those k frames. A non-causal one (AVS-Mamba: ``streaming.fill`` is
   ``repeat-oldest``) gets the newest frame in the last slot and the oldest repeated in front while fewer than T
   frames exist, and row T-1 is exact once the window is full;
3. the **decoder** runs on this frame's maps (or its temporal features) with the chosen row of the temporal
   outputs.

Results are resized to the source frame: sigmoid > threshold (binary) or argmax (semantic). ``segment_clip`` and
the live path share this code, so the same frames, timestamps and audio give identical results.

A model with a second image input (COMBO: ``manifest.maskige``) gets, with each frame, the Maskige its mask source
(``runtime.mask_sources``) paints from that frame (RGB, at its timestamp), normalised like the frame.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np

from runtime import audio as vggish_audio
from runtime.backends import STREAMING_ROLES, Backend, open_backend
from runtime.datasets.avsbench import pil_nearest_index
from runtime.manifest import Manifest, ManifestError, VideoSpec, load_manifest
from runtime.mask_sources import MaskSource, MaskSourceError, open_mask_source
from runtime.sync import AudioTimeline, FrameHistory, training_timestamps

__all__ = ["SegmentResult", "Segmenter", "SegmenterClosed", "preprocess_frame", "preprocess_maskige",
           "check_manifest"]

DEFAULT_AUDIO_WAIT = 0.25
_GUMBEL_INPUT = "gumbel_noise"


class SegmenterClosed(RuntimeError):
    """A method was called on a :class:`Segmenter` after ``close()``."""


@dataclass(frozen=True)
class SegmentResult:
    """The segmentation of one frame.

    Attributes:
        mask: ``[H, W]`` uint8 at the source frame's size: 0/1 (binary) or a class index (semantic).
        probabilities: at the model's output size: ``[h, w]`` sigmoid (binary) or ``[C, h, w]`` softmax, float32.
        timestamp: the frame's timestamp.
        audio_window: (start, end) clock times of the audio paired with the frame.
        audio_missing: seconds of that audio that had not arrived (taken as silence).
        window: timestamps of the frames in the temporal window, oldest first (the last is this frame).
        model_latency: seconds spent in the backend for this frame (encoder + temporal + decoder).
        latency: seconds from the frame's push (or the ``segment`` call) to this result.
        index: the number of frames of this stream segmented before this one (0 again after ``reset()``).
    """
    mask: np.ndarray
    probabilities: np.ndarray
    timestamp: float
    audio_window: tuple[float, float]
    audio_missing: float
    window: tuple[float, ...]
    model_latency: float
    latency: float
    index: int

    @property
    def area(self) -> float:
        """Fraction of the frame's pixels in the mask (any foreground class)."""
        return float(np.count_nonzero(self.mask)) / self.mask.size


def check_manifest(manifest: Manifest, directory: Path) -> None:
    """Refuse an artifact whose front end or streaming layout this runtime does not implement."""
    a = manifest.audio
    ours = (vggish_audio.SAMPLE_RATE, vggish_audio.WINDOW_SAMPLES, vggish_audio.HOP_SAMPLES,
            vggish_audio.FFT_LENGTH, vggish_audio.NUM_MEL_BANDS, vggish_audio.MEL_MIN_HZ, vggish_audio.MEL_MAX_HZ,
            vggish_audio.LOG_OFFSET, vggish_audio.EXAMPLE_FRAMES)
    theirs = (a.sample_rate, a.window_length, a.hop_length, a.fft_length, a.mel_bins, a.mel_min_hz, a.mel_max_hz,
              a.log_offset, a.example_frames)
    problems = []
    if ours != theirs:
        problems.append(f"its audio front end {theirs} is not this runtime's VGGish log-mel {ours}")
    v = manifest.video
    if v.channel_order not in ("RGB", "BGR") or v.layout != "NCHW" or v.resize != "bilinear":
        problems.append(f"its frame layout ({v.channel_order}, {v.layout}, {v.resize} resize) is not supported")
    if manifest.output.kind not in ("binary", "semantic"):
        problems.append(f"its output kind {manifest.output.kind!r} is unknown")
    missing = [r for r in STREAMING_ROLES if r not in manifest.graphs]
    if missing:
        problems.append(f"it lacks the streaming graph(s) {', '.join(missing)}")
    else:
        encoder_out = {t.name for t in manifest.graph("encoder").outputs}
        temporal_in = {t.name for t in manifest.graph("temporal").inputs}
        carry = set(manifest.streaming.carry)
        if not carry <= encoder_out or carry != temporal_in:
            problems.append(f"its streaming carry {sorted(carry)} does not link encoder outputs "
                            f"{sorted(encoder_out)} to temporal inputs {sorted(temporal_in)}")
    if problems:
        raise ManifestError(f"{directory} cannot be run by this runtime: " + "; ".join(problems)
                            + f"; rebuild it with: python -m export.build_engine --model {manifest.model.name} "
                              f"--out {directory}")


def preprocess_frame(image: np.ndarray, video: VideoSpec) -> np.ndarray:
    """A BGR uint8 frame -> ``[1, 3, R, R]`` float32 as the model was trained (resize, channel order, normalise)."""
    size = video.resolution
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if video.channel_order == "RGB":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    x = resized.astype(np.float32) * np.float32(video.value_scale)
    x = (x - np.asarray(video.mean, np.float32)) / np.asarray(video.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def preprocess_maskige(maskige_rgb: np.ndarray, video: VideoSpec) -> np.ndarray:
    """An RGB uint8 Maskige -> ``[1, 3, R, R]`` float32, normalised exactly as the frames (:func:`preprocess_frame`);
    one of another size is first resized with Pillow's nearest rule, as the official Maskiges were."""
    maskige = np.asarray(maskige_rgb)
    if maskige.dtype != np.uint8 or maskige.ndim != 3 or maskige.shape[2] != 3 or min(maskige.shape[:2]) < 1:
        raise ValueError(f"a Maskige must be RGB uint8 [H, W, 3]; got {maskige.dtype} {list(maskige.shape)}")
    size = video.resolution
    if maskige.shape[:2] != (size, size):
        maskige = maskige[pil_nearest_index(maskige.shape[0], size)][:, pil_nearest_index(maskige.shape[1], size)]
    return preprocess_frame(np.ascontiguousarray(maskige[:, :, ::-1]), video)  # same size: the resize is a copy


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"frame must be a numpy array (BGR uint8, H x W x 3); got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        hint = " (convert with cv2.cvtColor first)" if image.ndim in (2, 3) else ""
        raise ValueError(f"frame must be BGR uint8 with shape (H, W, 3); got {image.dtype} {image.shape}{hint}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"frame is too small: {image.shape}")
    return image


def _check_timestamp(timestamp: float) -> float:
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float, np.floating, np.integer)) \
            or not math.isfinite(timestamp):
        raise ValueError(f"timestamp must be a finite number of seconds; got {timestamp!r}")
    return float(timestamp)


class _StreamState:
    """What one stream remembers: its audio and its recently encoded frames."""

    def __init__(self, window: int, rate_hz: float):
        self.timeline = AudioTimeline()
        self.history: FrameHistory[dict[str, np.ndarray]] = FrameHistory(window, rate_hz)
        self.count = 0


class Segmenter:
    """Audio-visual segmentation of a live or recorded stream; see the module docstring.

    Args:
        artifact_dir: a directory written by ``python -m export.build_engine``.
        backend: 'auto' (TensorRT when engines fit this machine, else ONNX Runtime), 'tensorrt' or 'onnxruntime';
            or an opened :class:`runtime.backends.Backend` of this artifact (e.g. candidate graphs in calibration).
        precision: 'auto' (the fastest precision the artifact was validated for on the backend, announced),
            'fp32', 'fp16' (TensorRT) or 'int8' (see ``python -m calibration``).
        threshold: probability above which a pixel is foreground (binary models; default: the manifest's).
        audio: False for video-only use: every frame is paired with silence and nothing waits for audio.
        audio_wait: seconds the worker waits for a frame's audio before segmenting with what has arrived.
        say: where announcements go (backend choice, mask source, random weights); default stderr.
        seed: seed of the decoder's Gumbel noise, for artifacts exported with ``--gumbel input``.
        mask_source: for a model with a Maskige input (COMBO), a :class:`runtime.mask_sources.MaskSource` or its
            command-line value (``precomputed:DIR``, ``onnx:PATH[@HZ]``, ``overseg``); default: the artifact's
            ``maskige.default_source``, announced. The Segmenter closes it on ``close()``. One that cannot be
            opened, or any for a model without a Maskige input, raises
            :class:`runtime.mask_sources.MaskSourceError` (a ``ValueError``).
    """

    def __init__(self, artifact_dir: Union[str, Path], backend: Union[str, Backend] = "auto", *,
                 precision: str = "auto", threshold: Optional[float] = None,
                 audio: bool = True, audio_wait: float = DEFAULT_AUDIO_WAIT,
                 say: Optional[Callable[[str], None]] = None, seed: int = 0,
                 mask_source: Union[None, str, MaskSource] = None):
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self.directory = Path(artifact_dir)
        self.manifest = load_manifest(self.directory)
        check_manifest(self.manifest, self.directory)
        out = self.manifest.output
        self.binary = out.kind == "binary"
        self.threshold = float(threshold if threshold is not None else (out.threshold or 0.5))
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1; got {threshold}")
        self.audio, self.audio_wait, self.seed = bool(audio), float(audio_wait), int(seed)
        if self.manifest.model.random_weights:
            self.say(f"WARNING: {self.manifest.model.name} in {self.directory} has RANDOM weights (exported without "
                     "a checkpoint): its masks are meaningless. Rebuild with --checkpoint for real results.")
        self.mask_source: Optional[MaskSource] = self._open_mask_source(mask_source)
        try:
            self.backend: Backend = (backend if not isinstance(backend, str) else
                                     open_backend(self.directory, self.manifest, backend, STREAMING_ROLES, self.say,
                                                  precision))
        except BaseException:
            if self.mask_source is not None:
                self.mask_source.close()
            raise
        self.precision = self.backend.precision
        self._encoder = self.backend.runner("encoder")
        self._temporal = self.backend.runner("temporal")
        self._decoder = self.backend.runner("decoder")
        self.window_size = self.manifest.streaming.window
        self.rate_hz = self.manifest.streaming.frame_rate_hz
        self._silence = vggish_audio.log_mel_frames(np.zeros(vggish_audio.EXAMPLE_SPAN_SAMPLES))[None]
        self._infer_lock = threading.Lock()
        self._cond = threading.Condition()
        self._live = _StreamState(self.window_size, self.rate_hz)
        self._pending: Optional[tuple[np.ndarray, float, float]] = None
        self._latest: Optional[SegmentResult] = None
        self._error: Optional[BaseException] = None
        self._worker: Optional[threading.Thread] = None
        self._last_pushed: Optional[float] = None
        self._closed = False
        self.stats = {"pushed": 0, "segmented": 0, "dropped": 0, "audio_late": 0}

    # -- live API ----------------------------------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, sample_rate: float, timestamp: Optional[float] = None) -> None:
        """Add audio: ``(n,)`` or ``(n, channels)`` at ``sample_rate``; ``timestamp`` = its first sample's time
        (None: right after the previous chunk). Any rate; mixed to mono and resampled to 16 kHz."""
        if timestamp is not None:
            timestamp = _check_timestamp(timestamp)
        with self._cond:
            self._check_open("push_audio")
            self._live.timeline.push(samples, sample_rate, timestamp)
            self._cond.notify_all()

    def push_frame(self, image_bgr: np.ndarray, timestamp: float) -> None:
        """Queue a frame (BGR uint8) captured at ``timestamp``; it replaces a queued frame not yet segmented.

        A bad frame or a timestamp before the previous one raises ``ValueError`` here, in the caller, and the
        Segmenter stays usable (``reset()`` starts a new stream whose timestamps may begin anywhere).
        """
        image = _check_image(image_bgr).copy()
        timestamp = _check_timestamp(timestamp)
        with self._cond:
            self._check_open("push_frame")
            self._raise_worker_error()
            if self._last_pushed is not None and timestamp < self._last_pushed:
                raise ValueError(f"frame timestamp {timestamp:.6f} s is before the previous frame's "
                                 f"({self._last_pushed:.6f} s); call reset() when the source changes")
            self._last_pushed = timestamp
            if self._pending is not None:
                self.stats["dropped"] += 1
            self._pending = (image, timestamp, time.perf_counter())
            self.stats["pushed"] += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="segmenter", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def latest(self) -> Optional[SegmentResult]:
        """The newest result, or None before the first one."""
        with self._cond:
            self._check_open("latest")
            self._raise_worker_error()
            return self._latest

    def wait(self, after: int = -1, timeout: Optional[float] = None) -> Optional[SegmentResult]:
        """Block until a result with ``index > after`` exists (or ``timeout`` seconds pass); return the newest."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._check_open("wait")
            while self._latest is None or self._latest.index <= after:
                self._check_open("wait")
                self._raise_worker_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._latest

    def segment(self, image_bgr: np.ndarray, timestamp: float) -> SegmentResult:
        """Segment one frame now, in the calling thread, with the audio pushed so far (the live stream's state)."""
        self._check_open("segment")
        image = _check_image(image_bgr)
        result = self._process(self._live, image, _check_timestamp(timestamp), time.perf_counter())
        with self._cond:
            self._latest = result
            self._cond.notify_all()
        return result

    def audio_level(self) -> float:
        """RMS level of the last 0.1 s of pushed audio, in dBFS."""
        with self._cond:
            self._check_open("audio_level")
            return self._live.timeline.level_dbfs()

    def audio_until(self) -> Optional[float]:
        """Clock time up to which audio has been pushed (None before any)."""
        with self._cond:
            self._check_open("audio_until")
            return self._live.timeline.end_time

    def reset(self) -> None:
        """Forget the live stream's audio, frames, pending work, latest result and any error (e.g. after the source
        changed); result indices start again at 0."""
        with self._cond:
            self._check_open("reset")
            self._live = _StreamState(self.window_size, self.rate_hz)
            self._pending = None
            self._last_pushed = None
            self._error = None
            self._latest = None

    # -- offline API -------------------------------------------------------------------------------------------
    def segment_clip(self, frames: Sequence[np.ndarray], waveform: np.ndarray, sample_rate: float,
                     timestamps: Optional[Sequence[float]] = None) -> list[SegmentResult]:
        """Segment a recorded clip: ``frames`` (BGR uint8) with the clip's ``waveform`` (starting at time 0).

        ``timestamps`` are the frames' times in seconds from the start of the waveform; by default frame i is
        paired with VGGish example i of the waveform, as in training (``runtime.sync.training_timestamps``). A
        Maskige model gets its mask source's ``clip_maskiges`` of the frames at those timestamps. The live
        stream's state is left alone.
        """
        self._check_open("segment_clip")
        frames = list(frames)
        stamps = training_timestamps(len(frames)) if timestamps is None else np.asarray(timestamps, np.float64)
        if stamps.shape != (len(frames),):
            raise ValueError(f"got {len(frames)} frames but {stamps.size} timestamps")
        if np.any(np.diff(stamps) <= 0):
            raise ValueError("frame timestamps must increase strictly")
        frames = [_check_image(f) for f in frames]
        maskiges = self._clip_maskiges(frames, stamps)
        state = _StreamState(self.window_size, self.rate_hz)
        state.timeline = AudioTimeline(capacity_seconds=max(12.0, float(stamps[-1]) + 2.0) if len(stamps) else 12.0)
        state.timeline.push(waveform, sample_rate, 0.0)
        return [self._process(state, f, float(t), time.perf_counter(), maskige=m)
                for f, t, m in zip(frames, stamps, maskiges)]

    def segment_log_mel(self, frames: Sequence[np.ndarray], log_mel: np.ndarray) -> list[SegmentResult]:
        """Segment a clip whose audio is given as VGGish log-mel examples ``[T, 1, 96, 64]``, frame i with example
        i (e.g. AVSBench's precomputed ``audio_log_mel`` pickles); otherwise exactly as ``segment_clip``."""
        self._check_open("segment_log_mel")
        frames = [_check_image(f) for f in frames]
        examples = np.asarray(log_mel, np.float32)
        shape = (1, vggish_audio.EXAMPLE_FRAMES, vggish_audio.NUM_MEL_BANDS)
        if examples.ndim != 4 or examples.shape[1:] != shape or len(examples) < len(frames):
            raise ValueError(f"log_mel must be [T, {', '.join(map(str, shape))}] with T >= {len(frames)} (one "
                             f"example per frame); got {list(examples.shape)}")
        stamps = training_timestamps(len(frames))
        maskiges = self._clip_maskiges(frames, stamps)
        state = _StreamState(self.window_size, self.rate_hz)
        return [self._process(state, f, float(t), time.perf_counter(), example=e, maskige=m)
                for f, t, e, m in zip(frames, stamps, examples, maskiges)]

    def warmup(self) -> float:
        """Run one blank frame through every graph (first runs allocate and tune); returns the seconds it took."""
        self._check_open("warmup")
        start = time.perf_counter()
        size = self.manifest.video.resolution
        self.segment_clip([np.zeros((size, size, 3), np.uint8)], np.zeros(vggish_audio.SAMPLE_RATE, np.float32),
                          vggish_audio.SAMPLE_RATE)
        return time.perf_counter() - start

    # -- lifetime ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, release the backend and close the mask source; afterwards every method raises
        :class:`SegmenterClosed`."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=60)
        with self._infer_lock:
            self.backend.close()
            if self.mask_source is not None:
                self.mask_source.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------------
    def _check_open(self, method: str) -> None:
        if self._closed:
            raise SegmenterClosed(f"{method}() on a closed Segmenter ({self.directory}); create a new one")

    def _open_mask_source(self, mask_source: Union[None, str, MaskSource]) -> Optional[MaskSource]:
        """The mask source of a Maskige model (the artifact's default when None, announced); None otherwise."""
        spec, name = self.manifest.maskige, self.manifest.model.name
        if spec is None:
            if mask_source is not None:
                raise MaskSourceError(f"{name} in {self.directory} has no Maskige input (only COMBO artifacts take "
                                      "one); run it without a mask source (drop --mask-source)")
            return None
        if spec.input not in {t.name for t in self.manifest.graph("encoder").inputs}:
            raise ManifestError(f"{self.directory}: manifest.maskige names the input {spec.input!r}, which its "
                                f"encoder graph lacks; rebuild it with: python -m export.build_engine --model {name} "
                                f"--out {self.directory}")
        if mask_source is not None and not isinstance(mask_source, (str, MaskSource)):
            raise TypeError(f"mask_source must be a MaskSource or its command-line value (e.g. 'overseg'); got "
                            f"{type(mask_source).__name__}")
        chosen = spec.default_source if mask_source is None else mask_source
        if isinstance(chosen, MaskSource):
            source = chosen
        else:
            try:
                source = open_mask_source(chosen, self.manifest.video.resolution)
            except (ValueError, OSError, ImportError) as exc:
                raise MaskSourceError(f"mask source {chosen!r} cannot be opened: {exc}") from exc
        default = (f" (the artifact's default; {name} was trained with {spec.trained_with}; choose another with "
                   "--mask-source)") if mask_source is None else ""
        self.say(f"mask source: {source.describe()}{default}")
        return source

    def _clip_maskiges(self, frames: list[np.ndarray], stamps: np.ndarray) -> list[Optional[np.ndarray]]:
        """One Maskige per frame of a recorded clip (None each for a model without a Maskige input)."""
        if self.mask_source is None:
            return [None] * len(frames)
        return self.mask_source.clip_maskiges([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames], stamps)

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"segmenting a pushed frame failed: {self._error}; call reset() to go on") \
                from self._error

    def _work(self) -> None:
        """The worker: segment the newest pending frame. A failure is kept for the caller (latest(), wait(),
        push_frame() raise it until reset()) and the worker goes on with the next frame."""
        while True:
            with self._cond:
                while True:
                    while self._pending is None and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    image, timestamp, pushed = self._pending
                    remaining = pushed + self.audio_wait - time.perf_counter()
                    if not self.audio or self._live.timeline.covers(timestamp) or remaining <= 0:
                        break
                    self._cond.wait(remaining)  # for its audio, or a newer frame
                self._pending = None
                if self.audio and not self._live.timeline.covers(timestamp):
                    self.stats["audio_late"] += 1
                state = self._live
            try:
                result = self._process(state, image, timestamp, pushed)
            except Exception as exc:  # noqa: BLE001  (surfaced to the caller, see the docstring)
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                continue
            with self._cond:
                if state is self._live:             # not a frame of a stream that reset() has dropped
                    self._latest = result
                self._cond.notify_all()

    def _audio_example(self, state: _StreamState, timestamp: float):
        if not self.audio:
            return self._silence, (timestamp - vggish_audio.EXAMPLE_SPAN_SAMPLES / vggish_audio.SAMPLE_RATE,
                                   timestamp), 0.0
        with self._cond:
            window = state.timeline.window(timestamp)
        return window.example, (window.start, window.end), window.missing

    def _gumbel_noise(self, shape: Sequence[int], timestamp: float) -> np.ndarray:
        words = np.frombuffer(np.float64(timestamp).tobytes(), dtype=np.uint32)
        rng = np.random.default_rng([self.seed, *(int(w) for w in words)])
        return rng.uniform(1e-6, 1 - 1e-6, size=tuple(shape)).astype(np.float32)

    def _process(self, state: _StreamState, image: np.ndarray, timestamp: float, started: float,
                 example: Optional[np.ndarray] = None, maskige: Optional[np.ndarray] = None) -> SegmentResult:
        if example is None:
            example, audio_span, missing = self._audio_example(state, timestamp)
        else:  # a precomputed log-mel example (segment_log_mel)
            audio_span, missing = (timestamp - vggish_audio.EXAMPLE_SPAN_SAMPLES / vggish_audio.SAMPLE_RATE,
                                   timestamp), 0.0
        inputs = {"frame": preprocess_frame(image, self.manifest.video), "log_mel": example[None].astype(np.float32)}
        if self.mask_source is not None:
            if maskige is None:
                try:
                    maskige = self.mask_source.maskige(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), timestamp)
                except (OSError, ValueError) as exc:
                    raise MaskSourceError(f"no Maskige for the frame at {timestamp:.3f} s: {exc}") from exc
            inputs[self.manifest.maskige.input] = preprocess_maskige(maskige, self.manifest.video)
        with self._infer_lock:
            encoded = self._encoder.infer(inputs)
            model_time = self._encoder.inference_time
            carry = {name: encoded[name][0] for name in self.manifest.streaming.carry}
            with self._cond:
                state.history.add(timestamp, carry)
                window = state.history.window(timestamp)
                window_times = tuple(state.history.window_times(timestamp))
            feeds, row = self._window_feeds(window)
            temporal = self._temporal.infer(feeds)
            model_time += self._temporal.inference_time
            decoder_feeds = {}
            for spec in self._decoder.spec.inputs:
                if spec.name in temporal:
                    decoder_feeds[spec.name] = temporal[spec.name][row:row + 1]
                elif spec.name in encoded:
                    decoder_feeds[spec.name] = encoded[spec.name]
                elif spec.name == _GUMBEL_INPUT:
                    decoder_feeds[spec.name] = self._gumbel_noise(spec.shape, timestamp)
                else:
                    raise ManifestError(f"decoder input {spec.name!r} is produced by neither the encoder nor the "
                                        f"temporal graph of {self.directory}; rebuild the artifact")
            logits = self._decoder.infer(decoder_feeds)[self._decoder.spec.outputs[0].name][0]
            model_time += self._decoder.inference_time
            with self._cond:
                index = state.count
                state.count += 1
                if state is self._live:
                    self.stats["segmented"] += 1
        mask, probabilities = self._postprocess(logits, image.shape[:2])
        return SegmentResult(mask=mask, probabilities=probabilities, timestamp=timestamp, audio_window=audio_span,
                             audio_missing=missing, window=window_times, model_latency=model_time,
                             latency=time.perf_counter() - started, index=index)

    def _window_feeds(self, window: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
        """The temporal graph's T slots from the k cached frames (``manifest.streaming.fill``) and the row to
        decode: ``leading`` puts them first (zeros after, row k-1), ``repeat-oldest`` repeats the oldest in front
        (row T-1)."""
        repeat = self.manifest.streaming.fill == "repeat-oldest"
        feeds = {}
        for spec in self._temporal.spec.inputs:
            slots = np.zeros([int(d) for d in spec.shape], np.dtype(spec.dtype))
            cached = np.stack([entry[spec.name] for entry in window])
            if repeat:
                slots[:] = cached[0]
                slots[len(slots) - len(window):] = cached
            else:
                slots[:len(window)] = cached
            feeds[spec.name] = slots
        return feeds, (self.window_size if repeat else len(window)) - 1

    def _postprocess(self, logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        height, width = size
        if self.binary:
            probabilities = (1.0 / (1.0 + np.exp(-logits[0].astype(np.float64)))).astype(np.float32)
            resized = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
            return (resized > self.threshold).astype(np.uint8), probabilities
        shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
        probabilities = (shifted / shifted.sum(axis=0, keepdims=True)).astype(np.float32)
        labels = logits.argmax(axis=0).astype(np.uint8)
        return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST), probabilities
