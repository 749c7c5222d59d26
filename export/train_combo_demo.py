"""``python -m export.train_combo_demo``: make the shipped ``combo-s4-demo`` weights from nothing, in one command.

    python -m export.train_combo_demo [--data runs/demo] [--work runs/combo-demo] [--ship]

1. the SelM demo's avs-synth S4 data (``export.train_demo``'s seeds and sizes; generated into ``--data`` unless
   it is there already), so all demo models see the same training, validation and test clips; every frame's
   Maskige is painted by the weight-free over-segmentation (``overseg``, ``export.training.ClipMaskiges``: the
   synthetic set has no published Maskiges);
2. ``export.train`` with the recipe below; the audio encoder is ``vggish-demo``'s shipped weights inside the model,
   frozen (as COMBO keeps VGGish frozen);
3. the best epoch exported (``export.build_engine``) and scored through ONNX Runtime (``avs-eval``'s code, the
   artifact's default ``overseg`` mask source) on the held-out test set, with normal and swapped audio;
4. with ``--ship``: the weights copied to ``export/weights/combo-s4-demo.pth`` with ``combo-s4-demo.json``.

A run stopped during training continues after its last whole epoch when the command is repeated.

Recipe, and why it differs from COMBO's (AdamW lr 1e-4, weight decay 0.05, poly, batch 8, 90k iterations from
ImageNet backbones): the model is small and trained from scratch on a shared 2-core CPU, where one batch of 8
clips (40 frames through two backbones) takes 2-4 s, so it gets a budget of 600 steps: lr 1e-3 with a
cosine decay, batches of 8, 3 epochs of the same 1600 clips. Everything else is COMBO's recipe as
``export.training.recipe.COMBO_RECIPES['s4']`` holds it: Mask2Former's set criterion with the inter-frame
consistency loss, weight decay 0.05 (0 on norms and embeddings), gradient clipping at L2 norm 0.01 and the
backbones' learning rate x0.1 (here 1e-4: ``export.train`` offers no override of those two).
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

MODEL = "combo-s4-demo"
TRAIN_SEED = 0
RECIPE = dict(epochs=3, batch=8, lr=1e-3, schedule="cosine")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
AUDIO_WEIGHTS = WEIGHTS_DIR / "vggish-demo.pth"


def main(argv: Optional[list] = None) -> int:
    from export.build_engine import build_artifact
    from export.train_demo import DATA_SEED, TEST_CLIPS, TEST_SEED, TRAIN_CLIPS, VAL_CLIPS, evaluate_artifact, \
        make_data
    from export.training.trainer import TrainConfig, Trainer

    p = argparse.ArgumentParser(prog="python -m export.train_combo_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("runs/demo"),
                   help="the SelM demo's work folder holding synth/ and synth-test/ (made if missing)")
    p.add_argument("--work", type=Path, default=Path("runs/combo-demo"), help="checkpoints, artifact, reports")
    p.add_argument("--ship", action="store_true", help="copy the weights and their record to export/weights/")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    command = " ".join(["python -m export.train_combo_demo", *(argv if argv is not None else sys.argv[1:])])
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
    print("== export + ONNX Runtime evaluation on the held-out test set (overseg Maskiges)", flush=True)
    artifact = build_artifact(MODEL, args.work / "artifact", checkpoint=run_dir / "best.pth")
    test = evaluate_artifact(artifact, str(test_dir))
    times["eval_seconds"] = time.perf_counter() - start
    recipe = record["recipe"]
    summary = {"model": MODEL, "audio_encoder": "vggish-demo (vggish-demo.pth, frozen, inside the model)",
               "mask_source": "overseg (training and test)", "command": command,
               "seeds": {"data": DATA_SEED, "test_data": TEST_SEED, "training": TRAIN_SEED},
               "data": {"train_clips": TRAIN_CLIPS, "val_clips": VAL_CLIPS, "test_clips": TEST_CLIPS,
                        "generator": "runtime.datasets.synth (avs-synth), task s4, default SNR 5-20 dB"},
               "recipe": {**RECIPE, "weight_decay": record["settings"]["weight_decay"],
                          "norm_weight_decay": recipe["norm_weight_decay"],
                          "clip_grad_norm": recipe["clip_grad_norm"], "backbone_lr": recipe["backbone_lr"],
                          "loss": "Mask2Former set criterion + inter-frame consistency (combo-binary)"},
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
