"""``python -m export.train_sdavs_demo``: make the shipped ``sdavs-s4-demo`` weights from nothing, in one command.

    python -m export.train_sdavs_demo [--data runs/demo] [--work runs/sdavs-demo] [--ship]

1. the SelM demo's avs-synth S4 data (``export.train_demo``'s seeds and sizes; generated into ``--data`` unless
   it is there already), so both demo models see the same training, validation and test clips;
2. ``export.train`` with the recipe below; the audio encoder is ``vggish-demo``'s shipped conv trunk, frozen (as
   the paper keeps VGGish frozen);
3. the best epoch exported (``export.build_engine``) and scored through ONNX Runtime (``avs-eval``'s code) on the
   held-out test set, with normal and swapped audio;
4. with ``--ship``: the weights copied to ``export/weights/sdavs-s4-demo.pth`` with ``sdavs-s4-demo.json``.

A run stopped during training continues after its last whole epoch when the command is repeated.

Recipe, and why it differs from the paper's (AdamW lr 5e-5, batch 4, 40 epochs): the model is small and trained
from scratch (no ImageNet backbone) on a shared 2-core CPU, so it takes SelM demo's schedule: lr 1e-3 with a
cosine decay, batches of 8, 8 epochs of the same 1600 clips. The loss (BCE + IoU + Dice, frame 0 only, as S4's
training masks) is the paper's; the weight decay is the SDAVS recipe's (0.01, AdamW's default: the paper gives
none). Differences from the SelM demo besides the architecture: each model's own loss and weight decay, and the
audio encoder (SelM's was trained with it; SDAVS takes that encoder's conv trunk frozen).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["main", "RECIPE"]

MODEL = "sdavs-s4-demo"
TRAIN_SEED = 0
RECIPE = dict(epochs=8, batch=8, lr=1e-3, schedule="cosine")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
AUDIO_WEIGHTS = WEIGHTS_DIR / "vggish-demo.pth"


def main(argv: Optional[list] = None) -> int:
    from export.build_engine import build_artifact
    from export.train_demo import DATA_SEED, TEST_CLIPS, TEST_SEED, TRAIN_CLIPS, VAL_CLIPS, evaluate_artifact, \
        make_data
    from export.training.trainer import TrainConfig, Trainer

    p = argparse.ArgumentParser(prog="python -m export.train_sdavs_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("runs/demo"),
                   help="the SelM demo's work folder holding synth/ and synth-test/ (made if missing)")
    p.add_argument("--work", type=Path, default=Path("runs/sdavs-demo"), help="checkpoints, artifact, reports")
    p.add_argument("--ship", action="store_true", help="copy the weights and their record to export/weights/")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    command = " ".join(["python -m export.train_sdavs_demo", *(argv if argv is not None else sys.argv[1:])])
    times, start = {}, time.perf_counter()
    train_dir, test_dir = args.data / "synth", args.data / "synth-test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        print(f"== avs-synth into {args.data} (the SelM demo's data)", flush=True)
        make_data(args.data, TRAIN_CLIPS, VAL_CLIPS, TEST_CLIPS)
    times["data_seconds"] = time.perf_counter() - start
    print(f"== export.train {MODEL} {RECIPE}", flush=True)
    run_dir = args.work / "run"
    cfg = TrainConfig(model=MODEL, data=str(train_dir), out=str(run_dir), vggish=str(AUDIO_WEIGHTS),
                      audio_encoder="frozen", seed=TRAIN_SEED, device="cpu", cache=True,
                      threads=args.threads, **RECIPE)
    trainer = Trainer(cfg)
    if (run_dir / "train_state.pt").is_file():      # an interrupted (or finished) run continues where it stopped
        trainer.resume()
    record = trainer.fit()
    times["train_seconds"] = record["train_seconds"]          # all epochs, also those of an earlier, resumed run
    start = time.perf_counter()
    print("== export + ONNX Runtime evaluation on the held-out test set", flush=True)
    artifact = build_artifact(MODEL, args.work / "artifact", checkpoint=run_dir / "best.pth",
                              vggish=AUDIO_WEIGHTS)
    test = evaluate_artifact(artifact, str(test_dir))
    times["eval_seconds"] = time.perf_counter() - start
    summary = {"model": MODEL, "audio_encoder": "vggish-demo-map (vggish-demo.pth, frozen)", "command": command,
               "seeds": {"data": DATA_SEED, "test_data": TEST_SEED, "training": TRAIN_SEED},
               "data": {"train_clips": TRAIN_CLIPS, "val_clips": VAL_CLIPS, "test_clips": TEST_CLIPS,
                        "generator": "runtime.datasets.synth (avs-synth), task s4, default SNR 5-20 dB"},
               "recipe": {**RECIPE, "weight_decay": record["settings"]["weight_decay"], "loss": "BCE + IoU + Dice"},
               "best_epoch": record["best"],
               "epochs": [{"epoch": e["epoch"], "loss": e["train"]["loss"],
                           "train_clips_per_second": e["train"]["clips_per_second"],
                           "val_M_J": e["val"]["official"]["M_J"], "val_M_F": e["val"]["official"]["M_F"]}
                          for e in record["epochs"]],
               "times": times, "machine": record["device"], "torch": record["torch"], "test_onnxruntime": test}
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "demo_record.json").write_text(json.dumps(summary, indent=2) + "\n")
    for mode, result in test.items():
        print(f"test ({mode}): M_J {result['metrics']['official']['M_J']:.4f} "
              f"M_F {result['metrics']['official']['M_F']:.4f} silent area {result['silence']['mean_area']:.4f}")
    if args.ship:
        WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(run_dir / "best.pth", WEIGHTS_DIR / f"{MODEL}.pth")
        (WEIGHTS_DIR / f"{MODEL}.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"shipped {WEIGHTS_DIR / (MODEL + '.pth')} with {MODEL}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
