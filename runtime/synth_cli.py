"""``avs-synth``: write a synthetic audio-visual segmentation data set in the AVSBench-object layout.

The generator is ``runtime.datasets.synth``; this module is its argument parser. Exit status: 0 done, 2 bad flags
or an output folder that holds something else.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from runtime.datasets import synth

__all__ = ["build_parser", "main"]


def _epilog() -> str:
    classes = "\n".join(f"  {c.name:7s} {c.shape:8s} hue {c.hue:5.0f}  {c.sound}" for c in synth.CLASSES)
    return f"""\
examples:
  avs-synth --out data/synth --task s4 --clips 300 --seed 1             # 240 train, 30 val, 30 test
  avs-synth --out data/synth --task ms3 --clips 100 --seed 2 --split test --snr-db 0 10
  avs-synth --demo synth-demo.mp4                                        # one clip as an mp4 with sound

what a clip is: 5 frames (224 x 224 PNG, 1 fps) and 5 s of audio (16 kHz mono; 15 % at 44.1 kHz and 15 % at
48 kHz, stereo). 2-4 objects of distinct classes move over a textured background, with 1-2 silent distractors
that share the shape or the colour of a sounding class. Per second none or one class sounds (s4: always the
clip's category) or up to two (ms3), over noise, wind and clicks at --snr-db. The mask of a frame is the
pixels of the objects sounding in that second. Classes (shape, colour hue in degrees, sound):
{classes}

layout (under --out, the 'avsbench_data' folder of the official configs):
  Single-source/s4_meta_data.csv (name,start_time,category,split) and s4_data/{{visual_frames,gt_masks,
  audio_wav,audio_log_mel}}/<split>/<category>/...; Multi-sources/ms3_meta_data.csv (name,split) and ms3_data/.
  S4 train ships the first mask only, as AVSBench does. synth_clips.jsonl beside the csv describes each clip.
  Writing one split keeps the csv rows of the others, so splits can come from separate runs.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``avs-synth`` flags."""
    parser = argparse.ArgumentParser(
        prog="avs-synth", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(),
        description="Write a synthetic audio-visual segmentation data set that a model can only solve by "
                    "listening, in the exact AVSBench-object layout (same seed and flags: same bytes).")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder to write into (created; holds Single-source/ or Multi-sources/ like AVSBench's "
                             "avsbench_data)")
    parser.add_argument("--task", choices=synth.TASKS, default="s4",
                        help="s4: one sounding class per clip; ms3: up to two per second (default: s4)")
    parser.add_argument("--clips", type=int, default=300, metavar="N", help="how many clips to write (default: 300)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; clips are named after it, the same seed gives the same bytes (default: 0)")
    parser.add_argument("--split", choices=synth.SPLITS + ("all",), default="all",
                        help="which split the clips go to; 'all' = 80%% train, 10%% val, 10%% test (default)")
    parser.add_argument("--snr-db", type=float, nargs="+", metavar="DB", default=list(synth.DEFAULT_SNR_DB),
                        help="each clip's sound-to-background ratio in dB, drawn from LOW HIGH, or one fixed "
                             f"value (default: {synth.DEFAULT_SNR_DB[0]:g} {synth.DEFAULT_SNR_DB[1]:g})")
    parser.add_argument("--demo", type=Path, metavar="MP4",
                        help="instead: write one demo clip (a sounding object and a silent look-alike) as an mp4")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``avs-synth``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo is not None:
        plan = synth.render_demo_clip(args.demo, seed=args.seed)
        print(f"wrote {args.demo}: the {plan.category} sounds in seconds "
              f"{[k for k, s in enumerate(plan.sounding) if s]}; the other {plan.objects[0].shape} is silent")
        return 0
    if args.out is None:
        parser.error("--out is required (the folder to write the data set into), unless --demo is given")
    if len(args.snr_db) > 2:
        parser.error(f"--snr-db takes one value or a LOW HIGH range; got {len(args.snr_db)} values")
    low, high = args.snr_db[0], args.snr_db[-1]
    if low > high:
        parser.error(f"--snr-db LOW HIGH needs LOW <= HIGH; got {low:g} {high:g}")
    if args.clips < 1:
        parser.error(f"--clips must be at least 1; got {args.clips}")
    start = time.monotonic()
    try:
        plans = synth.write_dataset(args.out, args.task, args.clips, args.seed, args.split, (low, high),
                                    progress=not args.quiet)
    except ValueError as error:
        print(f"avs-synth: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{n} {s}" for s, n in synth.split_counts(args.clips, args.split).items())
    print(f"wrote {len(plans)} {args.task} clips ({counts}) to {args.out} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
