"""``avs-stream``: live audio-visual segmentation from a camera and microphone, a video file or a network stream.

Run ``avs-stream --help`` for the flags and examples. This module is the argument parser and the loop, the
jetson-inference one: take the newest frame, pair it with its audio (``runtime.microphone.AudioPump``), segment
it, hand it to the outputs (``runtime.outputs.Outputs``), until the source stops, ``--duration`` passes, q/ESC is
pressed or Ctrl-C arrives; every output is finalised on the way out. Faults end with one line saying what happened
and what to do, and an exit status from ``ExitCode``.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from enum import IntEnum
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from runtime.builder import ArtifactError, demo_cache_dir, ensure_artifacts

__all__ = ["ExitCode", "UserError", "build_parser", "main", "run", "demo_cache_dir", "ensure_artifacts"]

DEMO_MODEL = "selm-s4-demo"
DEMO_OUTPUT = Path("avs-demo.mp4")
DEMO_CLIP = "demo-synth-clip.mp4"
DEMO_SEED = 3  # avs-synth's demo clip; the demo model's data used seeds 1 (training) and 7 (test)
LIVE_AUDIO_WAIT = 0.25  # seconds a live frame waits for its audio
FORCE_QUIT = 130  # exit status after the third interrupt (128 + SIGINT)


class ExitCode(IntEnum):
    """Exit status of ``avs-stream``."""
    OK = 0  # finished, or stopped by q/ESC/Ctrl-C with every output finalised
    USAGE = 2  # bad flags, or an output path that cannot be written
    VIDEO_SOURCE = 3  # the camera, file or URL cannot be opened (or has no frames)
    AUDIO_SOURCE = 4  # the microphone cannot be opened
    ARTIFACTS = 5  # model directory missing, from another version, or cannot be built
    BACKEND = 6  # the inference backend cannot run the artifact here
    SOURCE_LOST = 7  # a live source failed mid-stream and did not come back (outputs are finalised)
    OUTPUT = 8  # an output file failed mid-run (disk full, ...); the others are finalised
    SOURCE_INCOMPLETE = 9  # a file ended early (truncated or corrupt); outputs hold the frames it had


class UserError(Exception):
    """A fault to report in one line, with its exit status."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


EPILOG = f"""\
examples:
  avs-stream --demo                                   # generated clip, demo model built on first use -> {DEMO_OUTPUT}
  avs-stream --camera 0 --mic default --model-dir artifacts/{DEMO_MODEL}
  avs-stream --source talk.mp4 --model-dir artifacts/{DEMO_MODEL} --output talk-seg.mp4 --jsonl talk.jsonl --headless
  avs-stream --source rtsp://192.168.1.20:554/stream --mic none --model-dir DIR --save-masks masks/
  avs-stream --source talk.mp4 --model-dir artifacts/combo-s4-pvt --mask-source onnx:sam_everything.onnx@2
  avs-stream --list-devices

schedule: each frame is paired with the 0.96 s of audio ending at its timestamp; the temporal window holds up to T
frames spaced as in training (1 s for SelM) ending at the newest frame; the newest frame is segmented at display
rate through the streaming split (encoder once per frame, temporal graph on the window, decoder on the frame).

Ctrl-C stops and finalises every output; a second one during finalising is ignored, a third quits at once
(exit {FORCE_QUIT}; the mp4 is fragmented, so it still plays up to its last second).

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
                        help=f"run on a generated clip with the demo model (both made on first use, kept in "
                             f"$AVS_EDGE_CACHE/demo or ~/.cache/avs-edge/demo); writes {DEMO_OUTPUT} unless "
                             "--output is given")
    source.add_argument("--retries", type=int, default=5, metavar="N",
                        help="reconnection attempts for a lost camera or stream, waits doubling from 0.5 s "
                             "(default 5)")
    source.add_argument("--list-devices", action="store_true", help="list cameras and microphones, then exit")
    model = parser.add_argument_group("Model: the artifact directory and how to run it")
    model.add_argument("--model-dir", type=Path, metavar="DIR",
                       help="artifact directory from python -m export.build_engine (required with --camera and "
                            "--source; --demo uses its cache)")
    model.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime"), default="auto",
                       help="inference backend (default auto: TensorRT when engines fit this machine)")
    model.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"), default="auto",
                       help="default auto: the fastest precision the artifact was validated for on the backend "
                            "(int8 after python -m calibration; fp16 on TensorRT), announced")
    model.add_argument("--threshold", type=float, metavar="P", help="mask threshold for binary models (default 0.5)")
    model.add_argument("--mask-source", metavar="SPEC",
                       help="COMBO only: where each frame's Maskige (its painted segment-everything masks) comes "
                            "from: precomputed:DIR (a recorded video's published *_mask_color.png files, one per "
                            "second), onnx:PATH[@HZ] (a segment-everything model in ONNX, run at most HZ times a "
                            "second, default 1, the last Maskige reused in between) or overseg (built-in "
                            "over-segmentation: no weights, but not the masks COMBO was trained with); default: the "
                            "artifact's (announced)")
    output = parser.add_argument_group("Output: what is shown and saved (paths are checked before the model loads)")
    output.add_argument("--output", type=Path, metavar="OUT.mp4", help="annotated video with the audio muxed back")
    output.add_argument("--save-masks", type=Path, metavar="DIR", help="one PNG mask per segmented frame")
    output.add_argument("--jsonl", type=Path, metavar="PATH",
                        help="one JSON line per segmented frame: timestamp, mask area, latency")
    output.add_argument("--headless", action="store_true", help="no window")
    output.add_argument("--duration", type=float, metavar="S", help="stop after S seconds of stream")
    output.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    return parser


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


def _check_args(args: argparse.Namespace) -> None:
    """Every flag, and every output path, checked before anything is loaded (raises :class:`UserError`)."""
    from runtime.outputs import OutputPathError, check_output_path

    chosen = [flag for flag, value in (("--camera", args.camera), ("--source", args.source), ("--demo", args.demo))
              if value]
    if len(chosen) != 1:
        raise UserError(ExitCode.USAGE, "choose one input: --camera INDEX|PATH, --source FILE|URL or --demo"
                        + (f" (got {' and '.join(chosen)})" if chosen else " (try: avs-stream --demo)"))
    if not args.demo and args.model_dir is None:
        raise UserError(ExitCode.USAGE, f"--model-dir DIR is required with {chosen[0]}: an artifact directory from "
                                        f"python -m export.build_engine --model {DEMO_MODEL} --out DIR "
                                        "(or try avs-stream --demo)")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(ExitCode.USAGE, f"--alpha must be in [0, 1]; got {args.alpha}")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise UserError(ExitCode.USAGE, f"--threshold must be between 0 and 1; got {args.threshold}")
    if args.retries < 0:
        raise UserError(ExitCode.USAGE, f"--retries must be >= 0; got {args.retries}")
    if args.duration is not None and not args.duration > 0:
        raise UserError(ExitCode.USAGE, f"--duration must be positive; got {args.duration}")
    if args.mask_source is not None:
        from runtime.mask_sources import parse_mask_source

        if args.demo and args.model_dir is None:
            raise UserError(ExitCode.USAGE, f"--mask-source is for COMBO artifacts; the demo model {DEMO_MODEL} has "
                                            "no Maskige input (give --model-dir of a COMBO artifact)")
        try:
            parse_mask_source(args.mask_source)
        except (ValueError, OSError) as exc:
            raise UserError(ExitCode.USAGE, f"--mask-source: {exc}") from None
    if args.demo and args.output is None:
        args.output = DEMO_OUTPUT
    outputs = [(flag, path) for flag, path in (("--output", args.output), ("--jsonl", args.jsonl),
                                               ("--save-masks", args.save_masks)) if path is not None]
    for flag, path in outputs:
        try:
            check_output_path(path, directory=flag == "--save-masks")
        except OutputPathError as exc:
            raise UserError(ExitCode.USAGE, f"{flag} {exc.path}: {exc.reason}") from None
    taken: dict[Path, str] = {}
    if args.source and Path(args.source).is_file():
        taken[Path(args.source).resolve()] = "--source"
    for flag, path in outputs:
        key = Path(path).resolve()
        if key in taken:
            raise UserError(ExitCode.USAGE, f"{flag} {path} is also {taken[key]}; give each output its own path "
                                            "(the input is never overwritten)")
        taken[key] = flag


class _Interrupts:
    """SIGINT/SIGTERM: the first stops the loop (KeyboardInterrupt); later ones while the outputs are finalised are
    reported and ignored, except that a third signal in all quits at once (exit ``FORCE_QUIT``)."""

    def __init__(self, say: Callable[[str], None], video: Optional[Path]):
        self.say, self.video = say, video
        self.count = 0
        self.stopping = False
        self._previous: dict = {}

    def __enter__(self) -> "_Interrupts":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def finalising(self) -> None:
        """From now on signals do not interrupt (the outputs are being finished)."""
        self.stopping = True

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt
        if self.count >= 3:
            kept = f"; {self.video} plays up to its last complete second" if self.video else ""
            self.say(f"quitting without finishing the outputs{kept}")
            os._exit(FORCE_QUIT)
        self.say("finishing the outputs; interrupt again to quit at once")


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
    from runtime.microphone import Microphone, MicrophoneError, NoAudioTrack, TrackAudio

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
        try:
            source = TrackAudio(str(video.uri.target), live=video.uri.live).start()
        except NoAudioTrack:
            say(f"audio: {video.uri} has no audio track: video-only, the model hears silence")
            return None
        say(f"audio: the source's own track ({source.sample_rate} Hz, {source.channels} ch)")
        return source
    except MicrophoneError as exc:
        raise UserError(ExitCode.AUDIO_SOURCE, str(exc)) from None


def _open_segmenter(args, model_dir: Path, audio: bool, say):
    from runtime.backends import BackendError
    from runtime.manifest import ManifestError
    from runtime.mask_sources import MaskSourceError
    from runtime.segmenter import Segmenter

    try:
        return Segmenter(model_dir, args.backend, precision=args.precision, threshold=args.threshold, audio=audio,
                         say=say, mask_source=args.mask_source)
    except ManifestError as exc:
        raise UserError(ExitCode.ARTIFACTS, str(exc)) from None
    except MaskSourceError as exc:
        raise UserError(ExitCode.USAGE, f"--mask-source: {exc}") from None
    except BackendError as exc:
        raise UserError(ExitCode.BACKEND, str(exc)) from None


def _record(frame, result, segmenter, live: bool, read_at: float) -> dict:
    """One frame's JSONL record: model latency (backend only), pipeline (segment call) and frame (read to written)."""
    record = {"frame": frame.index, "index": result.index, "timestamp": round(result.timestamp, 6),
              "mask_area": round(result.area, 6), "mask_pixels": int(np.count_nonzero(result.mask)),
              "latency_ms": round(result.model_latency * 1000, 3), "pipeline_ms": round(result.latency * 1000, 3),
              "frame_ms": round((time.perf_counter() - read_at) * 1000, 3),
              "audio_window": [round(t, 6) for t in result.audio_window],
              "audio_missing_s": round(result.audio_missing, 6), "window": len(result.window)}
    if live:
        record["capture_to_written_ms"] = round((time.monotonic() - result.timestamp) * 1000, 3)
    if not segmenter.binary:
        names = segmenter.manifest.output.class_names
        labels, counts = np.unique(result.mask, return_counts=True)
        record["classes"] = {names[int(k)]: round(int(c) / result.mask.size, 6) for k, c in zip(labels, counts) if k}
    return record


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
        from runtime.datasets.synth import render_demo_clip

        cache = demo_cache_dir()
        try:
            model_dir = ensure_artifacts(args.model_dir or cache / DEMO_MODEL, DEMO_MODEL, say)
        except ArtifactError as exc:
            raise UserError(ExitCode.ARTIFACTS, str(exc)) from None
        clip = cache / DEMO_CLIP
        if not clip.is_file():
            render_demo_clip(clip, seed=DEMO_SEED)
        say(f"demo: generated clip {clip} (avs-synth: a sounding object and a silent look-alike; no device, "
            f"no download)")
        args.source = str(clip)
    else:
        model_dir = args.model_dir
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        raise UserError(ExitCode.ARTIFACTS, str(exc)) from None
    if args.mask_source is not None and manifest.maskige is None:
        raise UserError(ExitCode.USAGE, f"--mask-source: {manifest.model.name} in {model_dir} has no Maskige input "
                                        "(only COMBO artifacts take one); drop --mask-source")

    video = _open_video(args, say)
    try:
        audio_source = _open_audio(args, video, say)
        try:
            return _stream(args, model_dir, video, audio_source, say, stats if stats is not None else {})
        finally:
            if audio_source is not None:
                audio_source.close()
    finally:
        video.close()


def _stream(args, model_dir: Path, video, audio_source, say, stats: dict) -> int:
    from runtime.mask_sources import MaskSourceError
    from runtime.microphone import AudioPump
    from runtime.outputs import OutputError, OutputPathError, Outputs

    segmenter = _open_segmenter(args, model_dir, audio_source is not None, say)
    try:
        say(f"warm-up run: {segmenter.warmup():.2f} s")
        rate, channels = (audio_source.sample_rate, audio_source.channels) if audio_source else (None, 1)
        try:
            outputs = Outputs(args.output, args.save_masks, args.jsonl, window=not args.headless,
                              fps=video.fps or 30.0, audio_rate=rate, audio_channels=channels, say=say)
        except (OutputPathError, OSError) as exc:  # the path changed since it was checked
            raise UserError(ExitCode.USAGE, f"cannot open the outputs: {exc}") from None
        sinks = [segmenter.push_audio] + ([outputs.add_audio] if outputs.wants_audio else [])
        pump = AudioPump(audio_source, sinks, say)
        with _Interrupts(say, args.output) as interrupts:
            try:
                count, interrupted, error = _loop(args, video, segmenter, pump, outputs, say, stats)
            finally:
                interrupts.finalising()
                close_error = None
                try:
                    report = outputs.close()
                except OutputError as exc:
                    close_error, report = exc, outputs.report
    finally:
        segmenter.close()
    error = error or close_error
    parts = [("interrupted; " if interrupted else "") + f"segmented {count} frames"]
    if stats.get("model_ms"):
        parts.append(f"model {np.mean(stats['model_ms'][-30:]):.1f} ms/frame")
    if video.dropped:
        parts.append(f"{video.dropped} stale frames skipped")
    if pump.overflows:
        parts.append(f"{pump.overflows} audio input overflows")
    if report:
        parts.append("wrote " + ", ".join(report))
    say("; ".join(parts))
    if isinstance(error, MaskSourceError):
        raise UserError(ExitCode.USAGE, f"--mask-source: {error}; the outputs hold the {count} frames before it")
    if error is not None:
        raise UserError(ExitCode.OUTPUT, f"{error}; the other outputs are finalised")
    if video.lost:
        raise UserError(ExitCode.SOURCE_LOST, f"{video.error}; outputs up to that point are finalised")
    if video.incomplete and count:
        raise UserError(ExitCode.SOURCE_INCOMPLETE, f"{video.error}; the outputs hold its {count} readable frames")
    if count == 0 and not interrupted:
        raise UserError(ExitCode.VIDEO_SOURCE, f"{video.uri} delivered no frame")
    return ExitCode.OK


def _loop(args, video, segmenter, pump, outputs, say, stats: dict) -> tuple[int, bool, Optional[Exception]]:
    """Read, pair, segment, render until the stream ends; returns (frames, interrupted, output or mask source
    error)."""
    from runtime.mask_sources import MaskSourceError
    from runtime.outputs import OutputError
    from runtime.render import draw_hud, format_hud, overlay

    manifest = segmenter.manifest
    extra = [f"{manifest.model.name} ({segmenter.backend.name})"]
    if manifest.model.random_weights:
        extra.append("RANDOM WEIGHTS: masks are meaningless")
    live, period = video.uri.live, 1.0 / (video.fps or 30.0)
    stats.update(frames=0, wall=0.0, cpu=0.0, frame_ms=[], model_ms=[])
    count, first, last_ts, fps, prev_done, start = 0, None, None, None, None, None
    model_ms: collections.deque = collections.deque(maxlen=30)

    def written(read_at: float, latency: float) -> None:
        stats["frames"] += 1
        stats.update(wall=time.perf_counter() - start[0], cpu=time.process_time() - start[1])
        stats["frame_ms"].append((time.perf_counter() - read_at) * 1000)
        stats["model_ms"].append(latency * 1000)

    try:
        while outputs.is_streaming:
            frame = video.read(timeout=0.5)
            if live:
                pump.pump()
            if frame is None:
                if not video.is_streaming():
                    break
                continue
            read_at = time.perf_counter()
            start = start or (read_at, time.process_time())
            first = frame.timestamp if first is None else first
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
            outputs.render(
                lambda f=frame, r=result, h=hud: draw_hud(overlay(f.image, r.mask, manifest.output.palette,
                                                                  segmenter.binary, args.alpha), h),
                frame.timestamp, index=frame.index,
                mask=result.mask * 255 if segmenter.binary else result.mask,
                record=lambda f=frame, r=result, t=read_at: _record(f, r, segmenter, live, t),
                done=lambda t=read_at, m=result.model_latency: written(t, m))
            count += 1
            last_ts = frame.timestamp
        else:
            say("stopped by the user (q/ESC)")
        if last_ts is not None and not live:
            pump.pump_file_until(last_ts + period)
            pump.pump(last_ts + period)
    except KeyboardInterrupt:
        return count, True, None
    except (OutputError, MaskSourceError) as exc:
        return count, False, exc
    return count, False, None


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
