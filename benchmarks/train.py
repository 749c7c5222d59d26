"""Training throughput on the CPU: clips per second of ``export.train``'s step (forward, recipe loss, backward,
AdamW) for a variant, on generated avs-synth S4 clips held in memory.

Usage: ``python -m benchmarks.train [--model selm-s4-demo] [--batch 8] [--steps 10] [--threads N]``

Columns: ``clips_s`` = clips per second over the timed steps (after one warm-up step), ``step_s`` = median seconds
per step, ``frames`` = frames per clip through the model (S4 trains on frame 0 only: the frames after it cannot
change the loss), ``load_avg`` = the 1-minute load average after the run (other load inflates times).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings

import torch


def run(model: str, batch: int, steps: int, threads: int) -> dict:
    from export.training.data import collate
    from export.training.losses import binary_loss
    from export.training.trainer import TrainConfig, Trainer, forward_supervised
    from runtime.datasets import synth

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        synth.write_dataset(tmp, "s4", batch, seed=11, split="train", progress=False)
        synth.write_dataset(tmp, "s4", 1, seed=11, split="val", progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(TrainConfig(model=model, data=tmp, out=tmp, batch=batch, lr=1e-4, device="cpu",
                                          audio_encoder="train"), progress=False)
        clips = collate([trainer.train_data[i] for i in range(batch)])
    trainer.model.train()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = binary_loss(*forward_supervised(trainer.model, trainer.audio, clips, True, trainer.device))["loss"]
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        if step:                                       # the first step warms up allocators and caches
            times.append(time.perf_counter() - start)
    return {"model": model, "batch": batch, "threads": torch.get_num_threads(), "steps": steps,
            "clips_s": round(batch * steps / sum(times), 2), "step_s": round(statistics.median(times), 3),
            "frames": int(clips["supervised"].nonzero()[:, 1].max()) + 1, "load_avg": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="selm-s4-demo")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    print(json.dumps(run(args.model, args.batch, args.steps, args.threads)))


if __name__ == "__main__":
    main()
