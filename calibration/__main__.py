"""``python -m calibration``: add INT8 (and FP16) with measured accuracy to an existing artifact."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from calibration.calibrate import BOUNDS, DEFAULTS, calibrate_artifact, format_table
from calibration.int8 import METHODS, CalibrationError
from runtime.datasets.avsbench import DatasetError
from runtime.manifest import ManifestError

EXIT_USAGE, EXIT_DATA, EXIT_BOUNDS, EXIT_ARTIFACT = 2, 3, 4, 5

EPILOG = f"""\
examples:
  python -m calibration --model-dir artifacts/selm-s4-demo --data synth          # generated clips, no download
  python -m calibration --model-dir artifacts/selm-s4-r50 --data AVSBench/Single-source --method entropy
  python -m calibration --model-dir ART --data my_videos/ --clips 32             # any videos with audio

data: 'synth' (clips drawn by avs-synth for the artifact's task), an AVSBench-layout folder (calibration from its
train split, accuracy from its test split), or a folder of videos with audio (5-s clips at one frame per second,
every fifth held out for accuracy; no ground truth, so agreement with fp32 only).

what it writes: <graph>.int8.onnx beside the fp32 graphs (Q/DQ: per-channel int8 weights, symmetric activations,
no bias Q/DQ, the scan and the module groups the sensitivity sweep finds harmful left fp32) and, in manifest.json,
each precision's accuracy on the held-out clips next to fp32. Bounds: int8 M_J within
{100 * BOUNDS['int8']['max_mj_drop']:g} points and mask agreement >= {100 * BOUNDS['int8']['min_mask_agreement']:g}%;
fp16 M_J within {100 * BOUNDS['fp16']['max_mj_drop']:g} points. avs-stream / avs-eval --precision auto then pick
int8 on ONNX Runtime when it passed. TensorRT INT8 engines: python -m export.build_engine ... --precision int8.

exit status: 0 done, {EXIT_USAGE} bad flags, {EXIT_DATA} data missing or malformed, {EXIT_BOUNDS} a precision is outside
its bounds (recorded; auto will not pick it), {EXIT_ARTIFACT} artifact missing, changed or not calibratable.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m calibration", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Add INT8 Q/DQ graphs and FP16 accuracy, each measured on held-out clips, to an artifact.")
    parser.add_argument("--model-dir", type=Path, required=True, metavar="ART",
                        help="artifact directory (python -m export.build_engine --out ART)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="'synth', an AVSBench-layout folder, or a folder of videos with audio")
    parser.add_argument("--method", choices=METHODS, default=DEFAULTS["method"],
                        help=f"activation range method (default {DEFAULTS['method']})")
    parser.add_argument("--clips", type=int, default=DEFAULTS["clips"], metavar="N",
                        help=f"calibration clips (default {DEFAULTS['clips']})")
    parser.add_argument("--accuracy-clips", type=int, default=DEFAULTS["accuracy_clips"], metavar="N",
                        help=f"held-out clips the accuracy is measured on (default {DEFAULTS['accuracy_clips']})")
    parser.add_argument("--sweep-clips", type=int, default=DEFAULTS["sweep_clips"], metavar="N",
                        help=f"calibration clips the sensitivity sweep runs on (default {DEFAULTS['sweep_clips']})")
    parser.add_argument("--budget", type=float, default=DEFAULTS["budget"], metavar="FRACTION",
                        help="1 - foreground IoU with fp32's masks the sweep allows before keeping groups fp32 "
                             f"(default {DEFAULTS['budget']})")
    parser.add_argument("--precisions", default="int8,fp16", metavar="LIST",
                        help="comma-separated: int8, fp16 (default both)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for name, value in (("--clips", args.clips), ("--accuracy-clips", args.accuracy_clips),
                        ("--sweep-clips", args.sweep_clips)):
        if value < 1:
            print(f"error: {name} must be >= 1; got {value}", file=sys.stderr)
            return EXIT_USAGE
    bad = [p for p in precisions if p not in BOUNDS]
    if bad or not precisions:
        print(f"error: --precisions takes {', '.join(BOUNDS)}; got {args.precisions!r}", file=sys.stderr)
        return EXIT_USAGE
    if not 0 < args.budget < 1:
        print(f"error: --budget is a fraction of pixels in (0, 1); got {args.budget}", file=sys.stderr)
        return EXIT_USAGE
    try:
        records = calibrate_artifact(args.model_dir, args.data, precisions=precisions, method=args.method,
                                     clips=args.clips, accuracy_clips=args.accuracy_clips,
                                     sweep_clips=args.sweep_clips, budget=args.budget)
    except CalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARTIFACT
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ARTIFACT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_table(records))
    return 0 if all(r.passed for r in records.values()) else EXIT_BOUNDS


if __name__ == "__main__":
    sys.exit(main())
