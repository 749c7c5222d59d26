"""``python -m export.train``: train or fine-tune a SelM, SDAVS, AVS-Mamba or COMBO variant with its task's official
recipe.

    python -m export.train --model selm-s4-r50 --data AVSBench/Single-source --out runs/s4 \\
        --vggish vggish-10086976.pth [--init S4_R50.pth] [--epochs N] [--batch N] [--lr X] [--resume]

Recipe (shared/specs/selm.md §1.4, §4): S4/MS3 Dice + BCE + auxiliary Dice on the decoder's three assignment
maps (weights 0.001/0.01/0.1; S4 supervises frame 0 only, as its training masks), AVSS 71-class cross-entropy +
aux; AdamW lr 2e-5, weight decay 0.05 (S4/MS3) or 0.01 (AVSS), batch 2/1/8, 40/100/30 epochs, frozen VGGish,
Gumbel hard assignment with straight-through gradients, seed 123. SDAVS (sdavs.md §4): BCE or cross-entropy +
IoU + Dice, AdamW lr 5e-5, batch 4, 40/60/40 epochs, frozen VGGish conv map (``--vggish``; no Gumbel noise).
AVS-Mamba (avs-mamba.md §4): S4/MS3 Dice on the output + Dice on the first decoder layer's mask (S4: frame 0 only),
AVSS 71-class cross-entropy on both; AdamW lr 2e-5, weight decay 0.01, batch 2/2/6, 60/120/50 epochs, image
backbone frozen for the first 20 epochs (S4/MS3). Its VGGish is inside the model (``audio_backbone``): ``--vggish``
loads into it (or ``--init`` brings it); ``--audio-encoder train`` unfreezes it (not the official recipe) and
``best.pth`` holds it.
COMBO (combo.md §4): Mask2Former's set criterion on all 10 decoder predictions (Hungarian matching, class
cross-entropy x2 with no-object weight 0.1, point-sampled mask BCE x5 and Dice x5; S4: frame 0 only) + the adaptive
inter-frame consistency loss on the 9 intermediate ones (x10 S4/MS3, x5 AVSS); AdamW lr 1e-4, weight decay 0.05
(none on norms and embeddings), backbones' lr x0.1, poly schedule, gradient L2 norm clipped to 0.01, batch 8;
the official 90k (S4, AVSS) / 20k (MS3) iterations as 209 / 541 / 85 epochs. VGGish is inside, as AVS-Mamba's. Each
frame needs its Maskige: the published ones (pre_SAM_mask/ in the data set), or for avs-synth data painted by the
built-in over-segmentation (``runtime.mask_sources.OversegmentMaskSource``).
See ``export.training.trainer`` for the files.
Exit status: 0 done, 2 bad flags or data, 130 interrupted (``--resume`` continues after the last whole epoch).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from export.training.trainer import SCHEDULES, TrainConfig, Trainer, TrainingError
from runtime.datasets.avsbench import DatasetError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``export.train`` flags."""
    p = argparse.ArgumentParser(prog="python -m export.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="a registered SelM, SDAVS, AVS-Mamba or COMBO variant (python -m "
                                                  "export.build_engine --list-models)")
    p.add_argument("--data", required=True, help="AVSBench or avs-synth folder (the subset or the one above)")
    p.add_argument("--out", required=True, help="folder for best.pth, last.pth, train_state.pt, train_record.json")
    p.add_argument("--init", metavar="CHECKPOINT", help="fine-tune from these weights (e.g. the official .pth)")
    p.add_argument("--vggish", metavar="PATH", help="the audio encoder's weights (vggish-10086976.pth; AVS-Mamba, "
                                                    "COMBO: loaded into its audio_backbone, over --init's)")
    p.add_argument("--audio-encoder", choices=("frozen", "train"), default="frozen",
                   help="frozen (official; needs --vggish, or --init for AVS-Mamba and COMBO) or train it with the "
                        "model (AVS-Mamba, COMBO: unfreezes its audio_backbone, which the official recipes never "
                        "train; default: %(default)s)")
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--batch", type=int, help="clips per step (default: the recipe's)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the recipe's, 2e-5; SDAVS 5e-5; COMBO "
                                            "1e-4)")
    p.add_argument("--weight-decay", type=float, help="default: the recipe's")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N training (and validation) clips")
    p.add_argument("--seed", type=int, default=123, help="weights, shuffling, Gumbel noise (default: %(default)s)")
    p.add_argument("--gumbel", choices=("sample", "none"), default="sample",
                   help="SelM: decoder assignment noise while training (default: %(default)s, as the official "
                        "code)")
    p.add_argument("--schedule", choices=tuple(SCHEDULES),
                   help="learning rate per step: constant, cosine decay or poly ((1 - step/steps)^0.9) (default: "
                        "the recipe's: poly for COMBO, constant for the others)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA with AMP when present, else CPU")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cache", action="store_true", help="keep decoded clips in memory (small data sets)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("epochs", "batch", "lr", "limit"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            print(f"export.train: error: --{flag} must be positive, got {value}", file=sys.stderr)
            return 2
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, epochs=args.epochs, batch=args.batch,
                      lr=args.lr, weight_decay=args.weight_decay, workers=args.workers, limit=args.limit,
                      seed=args.seed, init=args.init, vggish=args.vggish, audio_encoder=args.audio_encoder,
                      gumbel=args.gumbel, schedule=args.schedule, device=args.device, cache=args.cache,
                      threads=args.threads)
    try:
        trainer = Trainer(cfg, progress=not args.quiet)   # unknown model, unreadable or mismatched weights, data
    except (TrainingError, KeyError, ValueError, OSError) as exc:
        print(f"export.train: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.resume:
            trainer.resume()
        record = trainer.fit()
    except (TrainingError, DatasetError, OSError) as exc:
        print(f"export.train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("export.train: interrupted; --resume continues after the last whole epoch", file=sys.stderr)
        return 130
    print(json.dumps({"best": record["best"], "out": args.out, "train_seconds": round(record["train_seconds"], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
