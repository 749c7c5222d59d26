"""Streaming pipeline cost: avs-stream on a file source against pure backend inference on the same frames.

    python -m benchmarks.stream --model-dir artifacts/selm-s4-r50            # generated 6 s clip, 8 fps, 640x360
    python -m benchmarks.stream --model-dir DIR --clip talk.mp4 --json out.json

Three passes over the same frames and audio, same backend:

* **pure inference**: the encoder/temporal/decoder calls of one pass of ``Segmenter.segment_clip`` are recorded
  (inputs and outputs), then replayed alone and timed;
* **pipeline**: ``avs-stream --source CLIP --output ... --jsonl ... --headless`` run in this process: decoding
  thread, audio track, log-mel, preprocessing, inference, overlay and HUD, H.264/AAC encoding, JSONL;
* **pipeline without inference**: the same, with every graph answering instantly with its recorded outputs, so
  the process CPU time it takes is the CPU spent outside inference (ONNX Runtime's own threads cannot blur it).

Reported: throughput of the first two and their ratio (target >= 0.90), per-frame latency from frame read to
everything written (p50/p95), and CPU and wall time per frame outside inference. Every pass runs after a warm-up.
Machines are noisy (other processes share the cores): compare figures within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from runtime import cli
from runtime.backends import check_feeds
from runtime.capture import VideoSource
from runtime.cli import build_parser
from runtime.cli import run as avs_stream
from runtime.demo_clip import make_clip
from runtime.microphone import TrackAudio
from runtime.segmenter import Segmenter

TARGET_RATIO = 0.90


def _decode(clip: Path) -> tuple[list[np.ndarray], list[float], np.ndarray, int]:
    """Every frame with its timestamp, and the whole audio track, as the pipeline would read them."""
    images, stamps = [], []
    with VideoSource(clip) as video:
        while video.is_streaming():
            frame = video.read(timeout=5.0)
            if frame is not None:
                images.append(frame.image)
                stamps.append(frame.timestamp)
    chunks = []
    with TrackAudio(str(clip)) as track:
        while not track.finished:
            chunks.extend(track.read())
            track.wait(0.05)
    waveform = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(16000, np.float32)
    return images, stamps, waveform, track.sample_rate or 16000


class _Recorder:
    """Wraps a runner: passes calls through and keeps each call's inputs and outputs."""

    def __init__(self, runner, calls: list):
        self._runner, self._calls = runner, calls
        self.role, self.spec = runner.role, runner.spec

    @property
    def inference_time(self) -> float:
        return self._runner.inference_time

    def infer(self, feeds):
        outputs = self._runner.infer(feeds)
        self._calls.append((self._runner, {k: np.array(v, copy=True) for k, v in feeds.items()}, outputs))
        return outputs


class _Instant:
    """Stands in for a runner: checks the feeds like the real one, answers with recorded outputs at once."""

    def __init__(self, runner, outputs: dict):
        self.role, self.spec, self._outputs = runner.role, runner.spec, outputs
        self.inference_time = 0.0

    def infer(self, feeds):
        check_feeds(self.spec, feeds)
        return {k: v.copy() for k, v in self._outputs.items()}


def pure_inference(model_dir: Path, backend: str, images, stamps, waveform, rate) -> dict:
    """Replay the backend calls of one segment_clip pass; wall and CPU seconds for all frames."""
    calls: list = []
    with Segmenter(model_dir, backend, say=lambda line: None) as segmenter:
        segmenter.warmup()
        for name in ("_encoder", "_temporal", "_decoder"):
            setattr(segmenter, name, _Recorder(getattr(segmenter, name), calls))
        segmenter.segment_clip(images, waveform, rate, stamps)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for runner, feeds, _ in calls:
            runner.infer(feeds)
        outputs = {}
        for runner, _, out in calls:
            outputs.setdefault(runner.role, out)
        return {"frames": len(images), "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0,
                "backend": segmenter.backend.description, "outputs": outputs}


def pipeline(model_dir: Path, backend: str, clip: Path, work: Path, instant: Optional[dict] = None) -> dict:
    """avs-stream on the clip, in this process; its loop measurements. ``instant``: recorded outputs per graph
    role, to run the pipeline with inference answered instantly."""
    args = build_parser().parse_args(["--source", str(clip), "--model-dir", str(model_dir), "--backend", backend,
                                      "--output", str(work / "out.mp4"), "--jsonl", str(work / "out.jsonl"),
                                      "--headless"])
    stats: dict = {}
    original = cli._open_segmenter

    def open_instant(*a, **k):
        segmenter = original(*a, **k)
        for name in ("_encoder", "_temporal", "_decoder"):
            runner = getattr(segmenter, name)
            setattr(segmenter, name, _Instant(runner, instant[runner.role]))
        return segmenter

    if instant is not None:
        cli._open_segmenter = open_instant
    try:
        code = avs_stream(args, say=lambda line: None, stats=stats)
    finally:
        cli._open_segmenter = original
    if code != 0:
        raise SystemExit(f"avs-stream exited with {code}")
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="artifact directory")
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"))
    parser.add_argument("--clip", type=Path, help="video file with audio (default: a generated clip)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the generated clip (default 6)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the generated clip (default 8)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="avs-bench-") as tmp:
        work = Path(tmp)
        clip = args.clip or make_clip(work / "clip.mp4", seconds=args.seconds, fps=args.fps).path
        images, stamps, waveform, rate = _decode(clip)
        pure = pure_inference(args.model_dir, args.backend, images, stamps, waveform, rate)
        piped = pipeline(args.model_dir, args.backend, clip, work)
        bare = pipeline(args.model_dir, args.backend, clip, work, instant=pure["outputs"])
    frames = piped["frames"]
    if frames != pure["frames"]:
        raise SystemExit(f"the pipeline segmented {frames} frames, the pure pass {pure['frames']}")
    report = {
        "clip": str(args.clip or f"generated {args.seconds:g} s at {args.fps:g} fps, 640x360"),
        "backend": pure["backend"],
        "frames": frames,
        "inference_fps": frames / pure["wall"],
        "pipeline_fps": frames / piped["wall"],
        "throughput_ratio": pure["wall"] / piped["wall"],
        "frame_latency_ms_p50": float(np.percentile(piped["frame_ms"], 50)),
        "frame_latency_ms_p95": float(np.percentile(piped["frame_ms"], 95)),
        "model_ms_mean": float(np.mean(piped["model_ms"])),
        "cpu_outside_inference_ms_per_frame": bare["cpu"] / bare["frames"] * 1000,
        "wall_outside_inference_ms_per_frame": bare["wall"] / bare["frames"] * 1000,
        "cpu_inference_ms_per_frame": pure["cpu"] / frames * 1000,
    }
    for key, value in report.items():
        print(f"{key:36s} {value:.3f}" if isinstance(value, float) else f"{key:36s} {value}")
    verdict = "meets" if report["throughput_ratio"] >= TARGET_RATIO else "MISSES"
    print(f"pipeline/inference throughput {report['throughput_ratio']:.1%}: {verdict} the {TARGET_RATIO:.0%} target")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
