"""Evaluation throughput: clips per second of ``avs-eval`` per backend, and what reading the data alone costs.

    python -m benchmarks.evaluate --model-dir artifacts/selm-s4-r50                  # 8 generated S4 test clips
    python -m benchmarks.evaluate --model-dir DIR --data AVSBench/Single-source --clips 40 --json out.json

Passes, each after a one-clip warm-up: **read only** (the AVSBench reader and the metrics, a predictor that
returns the ground truth), then the full evaluation through ``runtime.Segmenter`` on each requested backend that
can run here (``onnxruntime``; ``tensorrt`` where engines fit the machine). Without ``--data`` a small S4-layout
test split is generated with ``avs-synth`` (``runtime.datasets.synth``) in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from runtime.backends import BackendError
from runtime.datasets.avsbench import AVSBench
from runtime.evaluate import evaluate, segmenter_predictor
from runtime.manifest import load_manifest
from runtime.segmenter import Segmenter


def _truth(clip) -> np.ndarray:
    masks = np.asarray(clip.masks[:clip.num_frames], np.float32)
    if len(masks) < clip.num_frames:  # S4 train: one mask
        masks = np.concatenate([masks, np.repeat(masks[-1:], clip.num_frames - len(masks), axis=0)])
    return masks


def run(model_dir: Path, data_dir: Path, clips: int, backends: list, say=print) -> dict:
    manifest = load_manifest(model_dir)
    task = "avss" if manifest.output.kind == "semantic" else None
    data = AVSBench(data_dir, task, "test", manifest.video.resolution)
    count = min(clips, len(data))
    read = evaluate(data, _truth, limit=count, progress=False)
    results = {"clips": count, "task": data.task, "read_only_clips_per_second": read["clips_per_second"]}
    say(f"{count} {data.task.upper()} clips; reading + metrics alone: {read['clips_per_second']:.2f} clips/s")
    for backend in backends:
        try:
            seg = Segmenter(model_dir, backend=backend, say=lambda line: None)
        except BackendError as exc:
            say(f"{backend}: skipped ({exc})")
            continue
        with seg:
            predict = segmenter_predictor(seg)
            predict(data[0])  # warm-up
            report = evaluate(data, predict, limit=count, progress=False)
        results[backend] = {"clips_per_second": report["clips_per_second"], "description": seg.backend.description,
                            "M_J": report["metrics"]["per_frame"]["M_J"]}
        say(f"{backend}: {report['clips_per_second']:.2f} clips/s ({seg.backend.description})")
    return results


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="artifact directory")
    parser.add_argument("--data", type=Path, help="AVSBench subset folder (default: 8 generated S4 test clips)")
    parser.add_argument("--clips", type=int, default=8, help="clips per pass (default: %(default)s)")
    parser.add_argument("--backends", default="onnxruntime,tensorrt", help="comma-separated (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="avs-eval-bench-") as tmp:
        data_dir = args.data
        if data_dir is None:
            from runtime.datasets.synth import write_dataset

            write_dataset(Path(tmp), "s4", args.clips, seed=0, split="test", progress=False)
            data_dir = Path(tmp)
        results = run(args.model_dir, data_dir, args.clips, backends)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
