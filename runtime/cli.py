"""``avs-stream``: live audio-visual segmentation from a camera and microphone, a video file or a network stream.

Run ``avs-stream --help`` for the flags and examples. The loop is the jetson-inference one: take the newest frame,
pair it with its audio, segment it, draw it, write it, until the source stops, ``--duration`` passes, q/ESC is
pressed or Ctrl-C arrives; every output file is finalised on the way out. Faults end with one line saying what
happened and what to do, and an exit status from ``ExitCode``.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from enum import IntEnum
from pathlib import Path
from typing import Callable, Optional, TextIO

import numpy as np

__all__ = ["ExitCode", "build_parser", "main", "run", "demo_cache_dir", "ensure_artifacts"]

DEMO_MODEL = "selm-s4-r50"
DEFAULT_MODEL_DIR = Path("artifacts") / DEMO_MODEL
DEMO_OUTPUT = Path("avs-demo.mp4")
DEMO_CLIP = "demo-clip.mp4"
LIVE_AUDIO_WAIT = 0.25  # seconds a live frame waits for its audio
AUDIO_LOOKAHEAD = 0.5  # seconds of a file's audio pushed beyond the current frame
WINDOW_NAME = "avs-stream"


class ExitCode(IntEnum):
    """Exit status of ``avs-stream``."""
    OK = 0  # finished, or stopped by q/ESC/Ctrl-C with every output finalised
    USAGE = 2  # bad flags
    VIDEO_SOURCE = 3  # the camera, file or URL cannot be opened (or has no frames)
    AUDIO_SOURCE = 4  # the microphone cannot be opened
    ARTIFACTS = 5  # model directory missing, from another version, or cannot be built
    BACKEND = 6  # the inference backend cannot run the artifact here
    SOURCE_LOST = 7  # a live source failed mid-stream and did not come back (outputs are finalised)


class UserError(Exception):
    """A fault to report in one line, with its exit status."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


EPILOG = f"""\
examples:
  avs-stream --demo                                   # generated clip, demo model built on first use -> {DEMO_OUTPUT}
  avs-stream --camera 0 --mic default --model-dir artifacts/{DEMO_MODEL}
  avs-stream --source talk.mp4 --output talk-seg.mp4 --jsonl talk.jsonl --headless
  avs-stream --source rtsp://192.168.1.20:554/stream --mic none --save-masks masks/
  avs-stream --list-devices

schedule: each frame is paired with the 0.96 s of audio ending at its timestamp; the temporal window holds up to T
frames spaced as in training (1 s for SelM) ending at the newest frame; the newest frame is segmented at display
rate through the streaming split (encoder once per frame, temporal graph on the window, decoder on the frame).

exit status: {', '.join(f'{c.value} {c.name.lower()}' for c in ExitCode)}.
"""


def build_parser() -> argparse.ArgumentParser:
    """The CLI, in argument groups."""
    parser = argparse.ArgumentParser(
        prog="avs-stream", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Segment the sounding objects of a live or recorded audio-visual stream.")
    source = parser.add_argument_group("Input: where frames and sound come from")
    source.add_argument("--camera", metavar="INDEX|PATH", help="camera index (0) or device (/dev/video0)")
    source.add_argument("--source", metavar="FILE|URL",
                        help="video file or RTSP/HTTP URL; its own audio track is used unless --mic is given")
    source.add_argument("--mic", metavar="NAME|INDEX|default|none",
                        help="microphone (default with --camera: 'default'); 'none' runs video-only with silence")
    source.add_argument("--demo", action="store_true",
                        help="run on a generated clip with the demo model (both made on first use)")
    source.add_argument("--retries", type=int, default=5, metavar="N",
                        help="reconnection attempts for a lost camera or stream, waits doubling from 0.5 s "
                             "(default 5)")
    source.add_argument("--list-devices", action="store_true", help="list cameras and microphones, then exit")
    model = parser.add_argument_group("Model: the artifact directory and how to run it")
    model.add_argument("--model-dir", type=Path, metavar="DIR",
                       help=f"artifact directory from python -m export.build_engine (default {DEFAULT_MODEL_DIR})")
    model.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                       help="inference backend (default auto: TensorRT when engines fit this machine)")
    model.add_argument("--threshold", type=float, metavar="P", help="mask threshold for binary models (default 0.5)")
    output = parser.add_argument_group("Output: what is shown and saved")
    output.add_argument("--output", type=Path, metavar="OUT.mp4", help="annotated video with the audio muxed back")
    output.add_argument("--save-masks", type=Path, metavar="DIR", help="one PNG mask per segmented frame")
    output.add_argument("--jsonl", type=Path, metavar="PATH",
                        help="one JSON line per segmented frame: timestamp, mask area, latency")
    output.add_argument("--headless", action="store_true", help="no window")
    output.add_argument("--duration", type=float, metavar="S", help="stop after S seconds of stream")
    output.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    return parser


def demo_cache_dir() -> Path:
    """Where ``--demo`` keeps its artifacts and clip: ``$AVS_EDGE_CACHE`` or ``~/.cache/avs-edge``."""
    return Path(os.environ.get("AVS_EDGE_CACHE", Path.home() / ".cache" / "avs-edge")) / "demo"


def ensure_artifacts(directory: Path, model: str = DEMO_MODEL, say: Callable[[str], None] = print) -> Path:
    """``directory`` holding a loadable artifact of ``model``, built by ``python -m export.build_engine`` if needed."""
    from runtime.manifest import ManifestError, load_manifest

    try:
        load_manifest(directory)
        return directory
    except ManifestError as exc:
        reason = str(exc).split(";")[0]
    if importlib.util.find_spec("torch") is None:
        raise UserError(ExitCode.ARTIFACTS,
                        f"{reason}; building it needs PyTorch (pip install 'avs-edge[export]'), or build it on "
                        f"another machine with python -m export.build_engine --model {model} and pass --model-dir")
    say(f"building the {model} artifact in {directory} (first use; a few minutes): {reason}")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "export.build_engine", "--model", model, "--out", str(directory)]
    done = subprocess.run(command, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise UserError(ExitCode.ARTIFACTS, f"building the artifact failed ({' '.join(command)} exited with "
                                            f"{done.returncode}; its messages are above)")
    try:
        load_manifest(directory)
    except ManifestError as exc:
        raise UserError(ExitCode.ARTIFACTS, f"the freshly built artifact does not load: {exc}") from None
    return directory


def list_devices(say: Callable[[str], None]) -> None:
    from runtime.capture import list_cameras
    from runtime.microphone import MicrophoneError, list_input_devices

    cameras = list_cameras()
    say("cameras:" + ("" if cameras else " none found (no /dev/video* devices)"))
    for camera in cameras:
        say(f"  {camera}")
    try:
        microphones = list_input_devices()
        say("microphones:" + ("" if microphones else " none found"))
        for device in microphones:
            say(f"  {device}")
    except MicrophoneError as exc:
        say(f"microphones: unavailable: {exc}")


class AudioPump:
    """Moves audio from its source (microphone, file track or nothing) to the segmenter and the mp4 writer.

    A file's track is handed over only up to ``AUDIO_LOOKAHEAD`` seconds past the frame being segmented, so the
    segmenter's ring always holds the audio of the frames to come.
    """

    def __init__(self, source, segmenter, writer, say: Callable[[str], None]):
        self.source, self.segmenter, self.writer, self.say = source, segmenter, writer, say
        self._held: collections.deque = collections.deque()
        self.until = -math.inf
        self._overflows = 0

    def pump(self, until: float = math.inf) -> None:
        """Hand over what has arrived, up to clock time ``until``."""
        if self.source is None:
            return
        self._held.extend(self.source.read())
        while self._held and self._held[0].timestamp < until:
            chunk = self._held.popleft()
            end = chunk.timestamp + chunk.duration
            if end > until and math.isfinite(until):
                keep = max(1, int(round((until - chunk.timestamp) * chunk.sample_rate)))
                rest = type(chunk)(chunk.samples[keep:], chunk.sample_rate, chunk.timestamp + keep / chunk.sample_rate)
                chunk = type(chunk)(chunk.samples[:keep], chunk.sample_rate, chunk.timestamp)
                if rest.samples.shape[0]:
                    self._held.appendleft(rest)
                end = until
            self.segmenter.push_audio(chunk.samples, chunk.sample_rate, chunk.timestamp)
            if self.writer is not None:
                self.writer.add_audio(chunk.samples, chunk.sample_rate, chunk.timestamp)
            self.until = max(self.until, end)
        overflows = getattr(self.source, "overflows", 0)
        if overflows > self._overflows:
            self._overflows = overflows
            self.say(f"audio: input overflow ({overflows} so far): samples were lost and replaced by silence; "
                     "continuing")

    def pump_file_until(self, timestamp: float, timeout: float = 10.0) -> None:
        """File track: decode until the audio reaches ``timestamp`` (or the track ends), then hand it over."""
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

    @property
    def overflows(self) -> int:
        return self._overflows


class _Display:
    """An OpenCV window, or nothing when headless or when OpenCV has no GUI / there is no display."""

    def __init__(self, headless: bool, say: Callable[[str], None]):
        import cv2

        self._cv2 = cv2
        self.enabled = not headless
        if self.enabled and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                                      or os.environ.get("WAYLAND_DISPLAY")):
            # NOTE: OpenCV's Qt backend aborts the process when it cannot reach a display, so do not try.
            self.enabled = False
            say("display: no $DISPLAY or $WAYLAND_DISPLAY; running headless")
        if self.enabled:
            try:
                cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            except cv2.error:
                self.enabled = False
                say("display: not available (OpenCV without GUI support); running headless")

    def show(self, image: np.ndarray) -> bool:
        """Show ``image``; False when the user pressed q or ESC."""
        if not self.enabled:
            return True
        self._cv2.imshow(WINDOW_NAME, image)
        key = self._cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.enabled:
            self._cv2.destroyAllWindows()


def _check_args(args: argparse.Namespace) -> None:
    chosen = [flag for flag, value in (("--camera", args.camera), ("--source", args.source), ("--demo", args.demo))
              if value]
    if len(chosen) != 1:
        raise UserError(ExitCode.USAGE, "choose one input: --camera INDEX|PATH, --source FILE|URL or --demo"
                        + (f" (got {' and '.join(chosen)})" if chosen else " (try: avs-stream --demo)"))
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(ExitCode.USAGE, f"--alpha must be in [0, 1]; got {args.alpha}")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise UserError(ExitCode.USAGE, f"--threshold must be between 0 and 1; got {args.threshold}")
    if args.retries < 0:
        raise UserError(ExitCode.USAGE, f"--retries must be >= 0; got {args.retries}")
    if args.duration is not None and not args.duration > 0:
        raise UserError(ExitCode.USAGE, f"--duration must be positive; got {args.duration}")


def _open_video(args, say):
    from runtime.capture import SourceError, VideoSource, parse_video_uri

    try:
        uri = parse_video_uri(args.camera if args.camera is not None else args.source)
        if args.camera is not None and uri.kind != "camera":
            raise SourceError(f"--camera takes an index or a /dev/video path, not {args.camera!r}; "
                              "use --source for files and URLs")
        if args.source is not None and uri.kind == "camera":
            raise SourceError(f"--source takes a file or URL; use --camera {args.source} for a camera")
        return VideoSource(uri, retries=args.retries, on_event=lambda line: say(f"video: {line}")).start()
    except SourceError as exc:
        raise UserError(ExitCode.VIDEO_SOURCE, str(exc)) from None


def _open_audio(args, video, say):
    """The audio source, or None for silence (said on screen)."""
    from runtime.microphone import Microphone, MicrophoneError, TrackAudio

    mic = args.mic if args.mic is not None else ("default" if video.uri.kind == "camera" else None)
    if mic is not None and mic.strip().lower() == "none":
        say("audio: none (--mic none): video-only, the model hears silence")
        return None
    try:
        if mic is not None:
            source = Microphone(mic).start()
            resampled = "" if source.sample_rate == 16000 else ", resampled to 16 kHz"
            say(f"audio: microphone {source.name!r} at {source.sample_rate} Hz, {source.channels} ch{resampled}")
            return source
        source = TrackAudio(str(video.uri.target), live=video.uri.live).start()
        say(f"audio: the source's own track ({source.sample_rate} Hz, {source.channels} ch)")
        return source
    except MicrophoneError as exc:
        if mic is None and "has no audio track" in str(exc):
            say(f"audio: {video.uri} has no audio track: video-only, the model hears silence")
            return None
        raise UserError(ExitCode.AUDIO_SOURCE, str(exc)) from None


def _jsonl_line(frame, result, segmenter, live: bool, frame_ms: float) -> str:
    """One frame's record: model latency (backend only), pipeline (segment call) and frame (read to written) times."""
    record = {"frame": frame.index, "index": result.index, "timestamp": round(result.timestamp, 6),
              "mask_area": round(result.area, 6), "mask_pixels": int(np.count_nonzero(result.mask)),
              "latency_ms": round(result.model_latency * 1000, 3), "pipeline_ms": round(result.latency * 1000, 3),
              "frame_ms": round(frame_ms, 3),
              "audio_window": [round(t, 6) for t in result.audio_window],
              "audio_missing_s": round(result.audio_missing, 6), "window": len(result.window)}
    if live:
        record["capture_to_written_ms"] = round((time.monotonic() - result.timestamp) * 1000, 3)
    if not segmenter.binary:
        names = segmenter.manifest.output.class_names
        labels, counts = np.unique(result.mask, return_counts=True)
        record["classes"] = {names[int(k)]: round(int(c) / result.mask.size, 6) for k, c in zip(labels, counts) if k}
    return json.dumps(record)


def run(args: argparse.Namespace, say: Callable[[str], None] = print, stats: Optional[dict] = None) -> int:
    """The whole command; returns the exit status (raises :class:`UserError` for faults).

    ``stats``, when given, receives the loop's measurements (benchmarks/stream.py reads them): ``frames``,
    ``wall`` and ``cpu`` (seconds from the first frame read to the last frame written), and per frame
    ``frame_ms`` (read to written) and ``model_ms``.
    """
    if args.list_devices:
        list_devices(say)
        return ExitCode.OK
    _check_args(args)
    from runtime.manifest import ManifestError, load_manifest

    if args.demo:
        from runtime.demo_clip import make_clip

        cache = demo_cache_dir()
        model_dir = ensure_artifacts(args.model_dir or cache / DEMO_MODEL, DEMO_MODEL, say)
        clip = cache / DEMO_CLIP
        if not clip.is_file():
            make_clip(clip)
        say(f"demo: generated clip {clip} (a moving, beeping ball; no device, no download)")
        args.source, args.output = str(clip), args.output or DEMO_OUTPUT
    else:
        model_dir = args.model_dir or DEFAULT_MODEL_DIR
        try:
            load_manifest(model_dir)
        except ManifestError as exc:
            raise UserError(ExitCode.ARTIFACTS, str(exc)) from None

    video = _open_video(args, say)
    closers: list[Callable[[], None]] = [video.close]
    try:
        audio_source = _open_audio(args, video, say)
        if audio_source is not None:
            closers.append(audio_source.close)
        return _stream(args, model_dir, video, audio_source, closers, say, stats if stats is not None else {})
    finally:
        for close in reversed(closers):
            close()


def _open_segmenter(args, model_dir: Path, audio: bool, say):
    from runtime.backends import BackendError
    from runtime.manifest import ManifestError
    from runtime.segmenter import Segmenter

    try:
        return Segmenter(model_dir, args.backend, threshold=args.threshold, audio=audio, say=say)
    except ManifestError as exc:
        raise UserError(ExitCode.ARTIFACTS, str(exc)) from None
    except BackendError as exc:
        raise UserError(ExitCode.BACKEND, str(exc)) from None


class _Outputs:
    """Overlay, HUD, mp4, mask PNGs and JSONL for each segmented frame, in order, in their own thread.

    The main loop hands over (frame, result) and goes on to the next frame, so drawing and encoding overlap with
    inference. Audio for the mp4 goes through the same queue to keep the writer single-threaded. ``close()``
    drains the queue and re-raises a failure of the thread.
    """

    def __init__(self, args, segmenter, writer, jsonl, live: bool, stats: dict):
        from runtime.render import draw_hud, overlay, write_mask_png

        self._draw, self._overlay, self._save_mask = draw_hud, overlay, write_mask_png
        self.args, self.segmenter, self.writer, self.jsonl, self.live, self.stats = (
            args, segmenter, writer, jsonl, live, stats)
        self.shown: Optional[np.ndarray] = None
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._error: Optional[BaseException] = None
        self._wall0 = self._cpu0 = None
        stats.update(frames=0, wall=0.0, cpu=0.0, frame_ms=[], model_ms=[])
        self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)
        self._thread.start()

    def frame(self, frame, result, read_at: float, hud: list[str]) -> None:
        self._check()
        if self._wall0 is None:
            self._wall0, self._cpu0 = read_at, time.process_time()
        self._queue.put(("frame", frame, result, read_at, hud))

    def add_audio(self, samples, sample_rate, timestamp) -> None:
        self._check()
        self._queue.put(("audio", samples, sample_rate, timestamp))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the outputs failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                if item[0] == "audio":
                    self.writer.add_audio(*item[1:])
                else:
                    self._write(*item[1:])
            except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread by _check)
                self._error = exc

    def _write(self, frame, result, read_at: float, hud: list[str]) -> None:
        seg, args = self.segmenter, self.args
        annotated = self._draw(self._overlay(frame.image, result.mask, seg.manifest.output.palette, seg.binary,
                                             args.alpha), hud)
        if self.writer is not None:
            self.writer.add_frame(annotated, frame.timestamp)
        if args.save_masks:
            self._save_mask(args.save_masks, frame.index, result.mask * 255 if seg.binary else result.mask)
        frame_ms = (time.perf_counter() - read_at) * 1000
        if self.jsonl is not None:
            self.jsonl.write(_jsonl_line(frame, result, seg, self.live, frame_ms) + "\n")
            self.jsonl.flush()
        self.shown = annotated
        self.stats["frames"] += 1
        self.stats.update(wall=time.perf_counter() - self._wall0, cpu=time.process_time() - self._cpu0)
        self.stats["frame_ms"].append(frame_ms)
        self.stats["model_ms"].append(result.model_latency * 1000)


def _stream(args, model_dir: Path, video, audio_source, closers: list, say, stats: dict) -> int:
    from runtime.render import Mp4Writer, format_hud

    segmenter = _open_segmenter(args, model_dir, audio_source is not None, say)
    closers.append(segmenter.close)
    say(f"warm-up run: {segmenter.warmup():.2f} s")
    manifest = segmenter.manifest
    writer = None
    if args.output:
        rate, channels = (audio_source.sample_rate, audio_source.channels) if audio_source else (None, 1)
        writer = Mp4Writer(args.output, audio_rate=rate, audio_channels=channels, fps=video.fps or 30.0)
        closers.append(writer.close)
    if args.save_masks:
        args.save_masks.mkdir(parents=True, exist_ok=True)
    jsonl: Optional[TextIO] = None
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl = open(args.jsonl, "w", encoding="utf-8")
        closers.append(jsonl.close)
    display = _Display(args.headless, say)
    closers.append(display.close)
    live = video.uri.live
    outputs = _Outputs(args, segmenter, writer, jsonl, live, stats)
    pump = AudioPump(audio_source, segmenter, outputs if writer is not None else None, say)
    extra = [f"{manifest.model.name} ({segmenter.backend.name})"]
    if manifest.model.random_weights:
        extra.append("RANDOM WEIGHTS: masks are meaningless")
    count, first, last_ts, fps, prev_done = 0, None, None, None, None
    model_ms: collections.deque = collections.deque(maxlen=30)
    interrupted = False
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            frame = video.read(timeout=0.5)
            if live:
                pump.pump()
            if frame is None:
                if not video.is_streaming():
                    break
                continue
            read_at = time.perf_counter()
            if first is None:
                first = frame.timestamp
            if args.duration is not None and frame.timestamp - first >= args.duration:
                break
            if live:
                pump.wait_live(frame.timestamp, LIVE_AUDIO_WAIT)
            else:
                pump.pump_file_until(frame.timestamp)
            result = segmenter.segment(frame.image, frame.timestamp)
            now = time.perf_counter()
            if prev_done is not None:
                rate = 1.0 / max(now - prev_done, 1e-6)
                fps = rate if fps is None else 0.9 * fps + 0.1 * rate
            prev_done = now
            model_ms.append(result.model_latency * 1000)
            hud = format_hud(fps, float(np.mean(model_ms)), segmenter.audio_level(),
                             extra + ([f"audio overflows: {pump.overflows}"] if pump.overflows else []))
            outputs.frame(frame, result, read_at, hud)
            count += 1
            last_ts = frame.timestamp
            if outputs.shown is not None and not display.show(outputs.shown):
                say("stopped by the user (q/ESC)")
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            if writer is not None and last_ts is not None and not live and not interrupted:
                pump.pump_file_until(last_ts + 1.0 / (video.fps or 30.0))
                pump.pump(last_ts + 1.0 / (video.fps or 30.0))
        finally:
            outputs.close()
    say(_summary(count, segmenter, video, pump, model_ms, args, interrupted))
    if video.lost:
        raise UserError(ExitCode.SOURCE_LOST, f"{video.error}; outputs up to that point are finalised")
    if count == 0 and not interrupted:
        raise UserError(ExitCode.VIDEO_SOURCE, f"{video.uri} delivered no frame")
    return ExitCode.OK


def _summary(count, segmenter, video, pump, model_ms, args, interrupted) -> str:
    parts = [("interrupted; " if interrupted else "") + f"segmented {count} frames"]
    if model_ms:
        parts.append(f"model {np.mean(model_ms):.1f} ms/frame (last {len(model_ms)})")
    if video.dropped:
        parts.append(f"{video.dropped} stale frames skipped")
    if pump.overflows:
        parts.append(f"{pump.overflows} audio input overflows")
    written = [str(p) for p in (args.output, args.jsonl, args.save_masks) if p]
    if written:
        parts.append("wrote " + ", ".join(written))
    return "; ".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: faults print one line (``error: ...``) and return their :class:`ExitCode`."""
    args = build_parser().parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        return int(run(args, say))
    except UserError as exc:
        say(f"error: {exc}")
        return int(exc.code)
    except KeyboardInterrupt:
        say("interrupted")
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
