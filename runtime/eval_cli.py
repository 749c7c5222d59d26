"""``avs-eval``: score an artifact (or saved predictions) on AVSBench with the official metrics.

Run ``avs-eval --help`` for the flags. The artifact runs through ``runtime.Segmenter`` clip by clip (the live
code path); the readers and metrics are ``runtime.datasets.avsbench`` and ``runtime.metrics``.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from enum import IntEnum
from pathlib import Path
from typing import Optional

__all__ = ["EvalExit", "build_parser", "main", "run"]


class EvalExit(IntEnum):
    """Exit status of ``avs-eval``."""
    OK = 0
    USAGE = 2  # bad flags, or an output path that cannot be written
    DATA = 3  # the data set (or a --predictions file) is missing or malformed; the message names the file
    ARTIFACTS = 5  # model directory missing, from another version, or for another task
    BACKEND = 6  # the inference backend cannot run the artifact here


class EvalError(Exception):
    def __init__(self, code: EvalExit, message: str):
        super().__init__(message)
        self.code = code


EPILOG = f"""\
examples:
  avs-eval --model-dir artifacts/selm-s4-r50 --data AVSBench/Single-source            # S4 test split
  avs-eval --model-dir artifacts/selm-ms3-pvt --data AVSBench/Multi-sources --json ms3.json
  avs-eval --model-dir artifacts/selm-avss-r50 --data AVSBench/AVSBench_semantic --save-masks masks/
  avs-eval --model-dir artifacts/combo-s4-pvt --data AVSBench/Single-source --mask-source precomputed
  avs-eval --predictions masks/ --task s4 --data AVSBench/Single-source               # score saved maps

the figures: M_J (Jaccard / mIoU) and M_F (F-measure, beta^2 = 0.3), in percent. 'official' is what the official
test scripts print (S4/MS3: averaged over test batches of 2 clips; AVSS: the zero-padded slots of 5-s clips scored
too); the second row is batch-free (per frame; AVSS: valid frames only). Saved predictions: DIR/<clip>/<i>.npy
(probabilities, or class indices for AVSS) or .png (grey levels / 255, or AVSBench palette colours).

exit status: {', '.join(f'{c.value} {c.name.lower()}' for c in EvalExit)}.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avs-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Score an audio-visual segmentation artifact on AVSBench (S4, MS3, AVSS) as the papers do.")
    what = parser.add_argument_group("What to score (one of)")
    what.add_argument("--model-dir", type=Path, metavar="ART",
                      help="artifact directory (python -m export.build_engine --out DIR)")
    what.add_argument("--predictions", type=Path, metavar="DIR", help="saved maps instead of a model (format below)")
    data = parser.add_argument_group("On what")
    data.add_argument("--data", type=Path, required=True, metavar="DIR",
                      help="AVSBench subset folder (with s4_meta_data.csv, ms3_meta_data.csv or metadata.csv) "
                           "or the folder above it")
    data.add_argument("--task", choices=("s4", "ms3", "avss"),
                      help="default: the artifact's (AVSS models -> avss, S4/MS3 models -> their subset; other "
                           "binary models -> s4 or ms3 from the data layout)")
    data.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: %(default)s")
    data.add_argument("--limit", type=int, metavar="N", help="score only the first N clips (a quick look)")
    run_ = parser.add_argument_group("How")
    run_.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"),
                      help="default: %(default)s (TensorRT engines when they fit this machine, else ONNX Runtime)")
    run_.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "int8"),
                      help="default: %(default)s (the fastest precision the artifact was validated for on the "
                           "backend); a reduced precision is scored next to fp32 on the same clips")
    run_.add_argument("--swap-audio", action="store_true",
                      help="give each clip the audio of the clip before it (the first clip the last one's): a model "
                           "that listens scores far lower")
    run_.add_argument("--clips-per-batch", type=int, metavar="N",
                      help="grouping of the official S4/MS3 figures (default: 2, the official test batch)")
    run_.add_argument("--mask-source", metavar="SPEC",
                      help="COMBO only: where each frame's Maskige comes from: precomputed (the data set's published "
                           "Maskiges, pre_SAM_mask/ beside its frames: how COMBO was evaluated), onnx:PATH[@HZ] (a "
                           "segment-everything model in ONNX, at most HZ Maskiges per second of video, default 1) or "
                           "overseg (built-in over-segmentation, no weights); default: the artifact's (announced)")
    out = parser.add_argument_group("Outputs")
    out.add_argument("--json", type=Path, metavar="OUT", help="write metrics, per-clip scores and provenance here")
    out.add_argument("--save-masks", type=Path, metavar="DIR", help="write each frame's mask as DIR/<clip>/<i>.png")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("avs-edge", "numpy", "onnxruntime", "opencv-python-headless", "tensorrt"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _check_flags(args) -> None:
    if (args.model_dir is None) == (args.predictions is None):
        raise EvalError(EvalExit.USAGE, "give either --model-dir ART (an artifact) or --predictions DIR (saved maps)")
    if args.predictions is not None and args.task is None:
        raise EvalError(EvalExit.USAGE, "--predictions needs --task s4|ms3|avss (there is no manifest to say)")
    if args.limit is not None and args.limit < 1:
        raise EvalError(EvalExit.USAGE, f"--limit must be >= 1; got {args.limit}")
    if args.clips_per_batch is not None and args.clips_per_batch < 1:
        raise EvalError(EvalExit.USAGE, f"--clips-per-batch must be >= 1; got {args.clips_per_batch}")
    if args.mask_source is not None:
        from runtime.mask_sources import parse_mask_source

        if args.predictions is not None:
            raise EvalError(EvalExit.USAGE, "--mask-source is for scoring a COMBO artifact (--model-dir), not saved "
                                            "--predictions")
        if args.mask_source.startswith("precomputed:"):
            raise EvalError(EvalExit.USAGE, f"--mask-source {args.mask_source}: precomputed:DIR is one video's "
                                            "Maskiges; to score with the data set's published Maskiges write "
                                            "--mask-source precomputed")
        if args.mask_source != "precomputed":
            try:
                parse_mask_source(args.mask_source)
            except (ValueError, OSError) as exc:
                raise EvalError(EvalExit.USAGE, f"--mask-source: {exc} (avs-eval also takes precomputed: the data "
                                                "set's published Maskiges)") from None
    for flag, path in (("--json", args.json), ("--save-masks", args.save_masks)):
        if path is not None and path.exists() and (path.is_dir() != (flag == "--save-masks")):
            raise EvalError(EvalExit.USAGE, f"{flag} {path} exists and is a {'file' if path.is_file() else 'folder'}")
    if args.json is not None and not os.access(args.json.parent if str(args.json.parent) else ".", os.W_OK):
        raise EvalError(EvalExit.USAGE, f"--json {args.json}: its folder is missing or not writable")


def _task_for(kind: str, setting: str, args, data_root: Path) -> str:
    """The task: --task, else the artifact's (semantic -> avss; its training subset), else the data layout's."""
    from runtime.datasets.avsbench import DatasetError, detect_task

    if kind == "semantic":
        if args.task not in (None, "avss"):
            raise EvalError(EvalExit.USAGE, f"--task {args.task}: the artifact is a semantic (AVSS) model")
        return "avss"
    if args.task == "avss":
        raise EvalError(EvalExit.USAGE, "--task avss: the artifact is a binary (S4/MS3) model")
    if args.task:
        return args.task
    if setting in ("s4", "ms3"):
        return setting
    try:
        task = detect_task(data_root)
    except DatasetError as exc:
        raise EvalError(EvalExit.DATA, str(exc)) from None
    if task == "avss":
        raise EvalError(EvalExit.USAGE, f"{data_root} is AVSBench-semantic but the artifact is a binary model; "
                                        "point --data at Single-source/ or Multi-sources/")
    return task


def run(args, say=print) -> int:
    """The command; returns the exit status (raises :class:`EvalError` for faults)."""
    from runtime.datasets.avsbench import AVSBench, DatasetError, avss_palette
    from runtime.evaluate import (PublishedMaskiges, evaluate, format_precisions, format_table, saved_predictor,
                                  segmenter_predictor)

    _check_flags(args)
    segmenter, provenance = None, {}
    try:
        if args.model_dir is not None:
            from runtime.backends import BackendError
            from runtime.manifest import ManifestError, load_manifest
            from runtime.mask_sources import MaskSourceError
            from runtime.segmenter import Segmenter

            try:
                manifest = load_manifest(args.model_dir)
            except (ManifestError, OSError) as exc:
                raise EvalError(EvalExit.ARTIFACTS, str(exc)) from None
            if args.mask_source is not None and manifest.maskige is None:
                raise EvalError(EvalExit.USAGE, f"--mask-source: {manifest.model.name} has no Maskige input (only "
                                                "COMBO artifacts take one); drop --mask-source")
            task = _task_for(manifest.output.kind, manifest.model.setting, args, args.data)

            def open_segmenter(precision: str) -> Segmenter:
                source = (PublishedMaskiges(manifest.video.resolution) if args.mask_source == "precomputed"
                          else args.mask_source)
                try:
                    return Segmenter(args.model_dir, backend=args.backend, precision=precision,
                                     say=lambda line: print(line, file=sys.stderr), mask_source=source)
                except MaskSourceError as exc:
                    raise EvalError(EvalExit.USAGE, f"--mask-source: {exc}") from None
                except (ManifestError, OSError) as exc:
                    raise EvalError(EvalExit.ARTIFACTS, str(exc)) from None
                except BackendError as exc:
                    raise EvalError(EvalExit.BACKEND, str(exc)) from None

            segmenter = open_segmenter(args.precision)
            m = manifest.model
            provenance = {"artifact": {"directory": str(args.model_dir), "model": m.name,
                                       "random_weights": m.random_weights, "gumbel": m.gumbel,
                                       "checkpoint": None if m.checkpoint is None else vars(m.checkpoint),
                                       "tools": manifest.tools},
                          "backend": segmenter.backend.description, "precision": segmenter.precision}
            if segmenter.mask_source is not None:
                provenance["mask_source"] = {
                    "spec": args.mask_source or manifest.maskige.default_source,
                    "default": args.mask_source is None, "description": segmenter.mask_source.describe(),
                    "trained_with": manifest.maskige.trained_with}
            resolution = manifest.video.resolution
        else:
            task, resolution = args.task, 224
            provenance = {"predictions": str(args.predictions)}
        try:
            data = AVSBench(args.data, task, args.split, resolution)
            if segmenter is not None:
                predict = segmenter_predictor(segmenter)
            else:
                palette = None if task != "avss" else avss_palette(len(data.class_names))
                predict = saved_predictor(args.predictions, task != "avss", palette)
            report = evaluate(data, predict, limit=args.limit, save_masks=args.save_masks,
                              clips_per_batch=args.clips_per_batch, progress=not args.quiet,
                              swap_audio=args.swap_audio)
            if segmenter is not None and segmenter.precision != "fp32":
                segmenter.close()
                segmenter = open_segmenter("fp32")
                fp32 = evaluate(data, segmenter_predictor(segmenter), limit=args.limit,
                                clips_per_batch=args.clips_per_batch, progress=not args.quiet,
                                swap_audio=args.swap_audio)
                report["fp32"] = {"metrics": fp32["metrics"], "seconds": fp32["seconds"]}
        except DatasetError as exc:
            raise EvalError(EvalExit.DATA, str(exc)) from None
    finally:
        if segmenter is not None:
            segmenter.close()
    report.update(provenance)
    report["data"] = str(args.data)
    report["versions"] = _versions()
    say(format_table(report))
    if "fp32" in report:
        say(format_precisions(report, report["precision"]))
    if args.json is not None:
        tmp = args.json.with_name(args.json.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, args.json)
        say(f"wrote {args.json}")
    return EvalExit.OK


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(run(args))
    except EvalError as exc:
        print(f"avs-eval: error: {exc}", file=sys.stderr)
        return int(exc.code)


if __name__ == "__main__":
    sys.exit(main())
