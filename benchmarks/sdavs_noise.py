"""Accuracy as the audio gets noisier: SDAVS demo vs SelM demo on the same held-out clips at fixed SNRs.

    python -m benchmarks.sdavs_noise --model selm=runs/demo/artifact --model sdavs=runs/sdavs-demo/artifact \\
        [--snr-db 20 10 5 0 -5 -10] [--clips 300] [--work runs/sdavs-noise] [--json noise.json]

For each SNR the same clips (avs-synth S4, seed 7 = the demo models' held-out test set, test split) are written
with every clip's sources at that SNR over the background (``avs-synth --snr-db X``: the pictures, objects and
timing do not change with the SNR, only the level of the background noise, wind and clicks), then each artifact
is scored with ``avs-eval`` (ONNX Runtime, official protocol). Prints a markdown table of M_J / M_F per SNR and
each model's drop from the cleanest level.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

TEST_SEED = 7


def test_set(work: Path, snr: float, clips: int) -> Path:
    """The held-out clips at ``snr`` dB (written once; a folder holding fewer clips is rewritten)."""
    from runtime.datasets import synth

    folder = work / f"snr{snr:g}"
    csv = folder / "Single-source" / "s4_meta_data.csv"
    if not csv.is_file() or len(csv.read_text().splitlines()) - 1 < clips:
        synth.write_dataset(folder, "s4", clips, TEST_SEED, split="test", snr_db=(snr, snr), progress=False)
    return folder


def score(artifact: Path, data: Path, clips: int, report: Path) -> dict:
    """avs-eval on the first ``clips`` test clips; the official M_J / M_F. A report already in ``report`` for the
    same artifact manifest and clip count is reused."""
    from runtime.eval_cli import main as eval_main

    manifest = (artifact / "manifest.json").read_text()
    if report.is_file():
        old = json.loads(report.read_text())
        if old.get("clips_evaluated") == clips and old.get("manifest") == manifest:
            return old["metrics"]["official"]
    code = eval_main(["--model-dir", str(artifact), "--data", str(data), "--split", "test", "--backend",
                      "onnxruntime", "--limit", str(clips), "--json", str(report), "--quiet"])
    if code != 0:
        raise SystemExit(f"avs-eval failed ({code}) on {artifact} / {data}")
    result = json.loads(report.read_text())
    report.write_text(json.dumps({**result, "manifest": manifest}, default=str) + "\n")
    return result["metrics"]["official"]


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sdavs_noise", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=ARTIFACT",
                   help="an artifact directory to score, with its table label (repeat)")
    p.add_argument("--snr-db", type=float, nargs="+", default=[20, 10, 5, 0, -5, -10])
    p.add_argument("--clips", type=int, default=300, help="test clips per SNR (default: %(default)s)")
    p.add_argument("--work", type=Path, default=Path("runs/sdavs-noise"), help="test sets and reports")
    p.add_argument("--json", type=Path, help="write the table as JSON here")
    args = p.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.model)
    results: dict[str, dict[str, dict]] = {label: {} for label in models}
    for snr in args.snr_db:
        data = test_set(args.work, snr, args.clips)
        for label, artifact in models.items():
            metrics = score(Path(artifact), data, args.clips, args.work / f"eval-{label}-snr{snr:g}.json")
            results[label][f"{snr:g}"] = {"M_J": metrics["M_J"], "M_F": metrics["M_F"]}
            print(f"SNR {snr:g} dB, {label}: M_J {100 * metrics['M_J']:.2f} M_F {100 * metrics['M_F']:.2f}",
                  flush=True)
    labels = list(models)
    print(f"\n| SNR (dB) | {' | '.join(f'{m} M_J | {m} M_F' for m in labels)} |")
    print(f"|---|{'---|---|' * len(labels)}")
    for snr in args.snr_db:
        row = " | ".join(f"{100 * results[m][f'{snr:g}']['M_J']:.2f} | {100 * results[m][f'{snr:g}']['M_F']:.2f}"
                         for m in labels)
        print(f"| {snr:g} | {row} |")
    top, low = f"{args.snr_db[0]:g}", f"{args.snr_db[-1]:g}"
    drops = {m: {k: results[m][top][k] - results[m][low][k] for k in ("M_J", "M_F")} for m in labels}
    row = " | ".join(f"{100 * drops[m]['M_J']:.2f} | {100 * drops[m]['M_F']:.2f}" for m in labels)
    print(f"| drop {top} -> {low} | {row} |")
    if args.json:
        args.json.write_text(json.dumps({"clips": args.clips, "test_seed": TEST_SEED, "results": results,
                                         "drops": drops, "artifacts": models}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
