"""``python -m export.train_demo``: make the shipped ``selm-s4-demo`` weights from nothing, in one command.

    python -m export.train_demo [--work runs/demo] [--ship]   # ~43 min + 4 min of evaluation on 2 CPU cores

1. avs-synth S4 data (seed ``DATA_SEED``): ``TRAIN_CLIPS`` training clips (frame-0 masks, as AVSBench) and
   ``VAL_CLIPS`` validation clips;
2. ``export.train`` with the recipe below (the audio encoder, ``vggish-demo``, is trained with the model);
3. the best epoch's weights exported (``export.build_engine``) and scored through ONNX Runtime (``avs-eval``'s
   code) on a held-out test set (seed ``TEST_SEED``, never used in training): normal audio, every clip's audio
   swapped for another clip's, and the predicted area in silent seconds;
4. with ``--ship``: the weights copied to ``export/weights/`` with ``selm-s4-demo.json`` (this command, seeds,
   epochs, times, metrics) beside them.

How the recipe differs from the official S4 one, and why: the model is tiny and trained from scratch (no ImageNet
backbone, no AudioSet VGGish), so it takes a larger learning rate (1e-3 instead of 2e-5) with a cosine decay,
batches of 8 clips and a fixed number of epochs sized to the time budget. The loss (Dice + BCE + aux Dice, frame 0
only), AdamW's weight decay and the Gumbel assignment noise are the official ones. One torch thread: on a shared
2-core machine two threads stall each other; the test set is generated on the other core meanwhile.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["main", "DATA_SEED", "TEST_SEED", "TRAIN_SEED"]

MODEL, AUDIO = "selm-s4-demo", "vggish-demo"
DATA_SEED, TEST_SEED, TRAIN_SEED = 1, 7, 0
TRAIN_CLIPS, VAL_CLIPS, TEST_CLIPS = 1600, 64, 300
RECIPE = dict(epochs=8, batch=8, lr=1e-3, weight_decay=0.05, schedule="cosine", gumbel="sample")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _stage(title: str) -> float:
    print(f"== {title}", flush=True)
    return time.perf_counter()


def make_data(work: Path, train_clips: int, val_clips: int, test_clips: int) -> dict:
    """Training/validation set and the held-out test set (a separate folder, another seed)."""
    from runtime.datasets import synth

    train_dir, test_dir = work / "synth", work / "synth-test"
    test = multiprocessing.get_context("spawn").Process(
        target=synth.write_dataset, args=(test_dir, "s4", test_clips, TEST_SEED), kwargs=dict(split="test",
                                                                                            progress=False))
    test.start()                                                    # on the other core
    synth.write_dataset(train_dir, "s4", train_clips, DATA_SEED, split="train")
    synth.write_dataset(train_dir, "s4", val_clips, DATA_SEED, split="val")
    test.join()
    if test.exitcode != 0:
        raise SystemExit(f"generating the test set in {test_dir} failed (exit {test.exitcode})")
    return {"train": str(train_dir), "test": str(test_dir)}


def evaluate_artifact(artifact: Path, data: str) -> dict:
    """avs-eval on the test split: normal, swapped audio; M_J, M_F and the silent-second area of each."""
    from runtime.eval_cli import main as eval_main

    out = {}
    for mode, extra in (("normal", []), ("swapped_audio", ["--swap-audio"])):
        report = artifact / f"eval-{mode}.json"
        code = eval_main(["--model-dir", str(artifact), "--data", data, "--split", "test", "--backend",
                          "onnxruntime", "--json", str(report), "--quiet", *extra])
        if code != 0:
            raise SystemExit(f"avs-eval failed ({code}) on {artifact}")
        full = json.loads(report.read_text())
        out[mode] = {"metrics": full["metrics"], "silence": full["silence"], "clips": full["clips_evaluated"]}
    return out


def evaluate_torch(run_dir: Path, data: str) -> dict:
    """The same weights in PyTorch (``export.evaluate``'s predictor) on the same test split, normal audio."""
    from export.evaluate import torch_predictor
    from export.models import create_model
    from runtime.datasets.avsbench import AVSBench
    from runtime.evaluate import evaluate

    model = create_model(MODEL, run_dir / "best.pth")
    audio = create_model(AUDIO, run_dir / "best.audio.pth")
    report = evaluate(AVSBench(data, "s4", "test", model.cfg.resolution), torch_predictor(model, audio),
                      progress=False)
    return {"metrics": report["metrics"], "silence": report["silence"], "clips": report["clips_evaluated"]}


def main(argv: Optional[list] = None) -> int:
    from export.build_engine import build_artifact
    from export.training.trainer import TrainConfig, Trainer

    p = argparse.ArgumentParser(prog="python -m export.train_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="data, checkpoints, artifact, reports")
    p.add_argument("--ship", action="store_true", help="copy the weights and their record to export/weights/")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    command = " ".join(["python -m export.train_demo", *(argv if argv is not None else sys.argv[1:])])
    times = {}
    start = _stage(f"avs-synth: {TRAIN_CLIPS} train + {VAL_CLIPS} val clips (seed {DATA_SEED}), "
                   f"{TEST_CLIPS} test clips (seed {TEST_SEED})")
    dirs = make_data(args.work, TRAIN_CLIPS, VAL_CLIPS, TEST_CLIPS)
    times["data_seconds"] = time.perf_counter() - start
    start = _stage(f"export.train {MODEL} {RECIPE}")
    run_dir = args.work / "run"
    cfg = TrainConfig(model=MODEL, data=dirs["train"], out=str(run_dir), audio_encoder="train", seed=TRAIN_SEED,
                      device="cpu", cache=True, threads=args.threads, **RECIPE)
    record = Trainer(cfg).fit()
    times["train_seconds"] = time.perf_counter() - start
    start = _stage("export + ONNX Runtime evaluation on the held-out test set")
    artifact = build_artifact(MODEL, args.work / "artifact", checkpoint=run_dir / "best.pth",
                              vggish=run_dir / "best.audio.pth")
    test = evaluate_artifact(artifact, dirs["test"])
    test["pytorch_normal"] = evaluate_torch(run_dir, dirs["test"])
    times["eval_seconds"] = time.perf_counter() - start
    summary = {"model": MODEL, "audio_encoder": AUDIO, "command": command, "seeds": {
        "data": DATA_SEED, "test_data": TEST_SEED, "training": TRAIN_SEED},
        "data": {"train_clips": TRAIN_CLIPS, "val_clips": VAL_CLIPS, "test_clips": TEST_CLIPS,
                 "generator": "runtime.datasets.synth (avs-synth), task s4, default SNR 5-20 dB"},
        "recipe": RECIPE, "best_epoch": record["best"], "epochs": [
            {"epoch": e["epoch"], "loss": e["train"]["loss"], "train_clips_per_second": e["train"]["clips_per_second"],
             "val_M_J": e["val"]["official"]["M_J"], "val_M_F": e["val"]["official"]["M_F"]} for e in record["epochs"]],
        "times": times, "machine": record["device"], "torch": record["torch"], "test_onnxruntime": test}
    (args.work / "demo_record.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("best_epoch", "times")}, indent=2))
    for mode, result in test.items():              # normal, swapped_audio (ONNX Runtime), pytorch_normal
        print(f"test ({mode}): M_J {result['metrics']['official']['M_J']:.4f} "
              f"M_F {result['metrics']['official']['M_F']:.4f} silent area {result['silence']['mean_area']:.4f}")
    if args.ship:
        WEIGHTS_DIR.mkdir(exist_ok=True)
        shutil.copyfile(run_dir / "best.pth", WEIGHTS_DIR / f"{MODEL}.pth")
        shutil.copyfile(run_dir / "best.audio.pth", WEIGHTS_DIR / f"{AUDIO}.pth")
        (WEIGHTS_DIR / f"{MODEL}.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"shipped {WEIGHTS_DIR / (MODEL + '.pth')} and {AUDIO}.pth with {MODEL}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
