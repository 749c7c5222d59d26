"""Parameters and MACs of an SDAVS variant per component, next to the paper's Table X (Swin-B ablation model).

    python -m benchmarks.sdavs_budget [--model sdavs-s4-swinb]

Counted on the meta device (``export.models.sdavs.budget_report``: nothing is computed, a second or two). MACs are
for one clip of T frames; Table X's "FLOPs (G)" fit that convention (Swin-B at 384 is 47 GMAC per frame).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional


def main(argv: Optional[list] = None) -> int:
    from export.models.sdavs import PAPER_BUDGET, budget_report

    p = argparse.ArgumentParser(prog="python -m benchmarks.sdavs_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sdavs-s4-swinb")
    args = p.parse_args(argv)
    report = budget_report(args.model)
    print(f"| {args.model} | params (M) | paper (M) | GMACs / clip | paper (G) |")
    print("|---|---|---|---|---|")
    for name, row in report.items():
        paper = PAPER_BUDGET.get(name)
        ref = ["-", "-"] if paper is None else [f"{paper[0]:g}", "-" if paper[1] is None else f"{paper[1]:g}"]
        if name == "STC":       # removing STC saves 0.2 M parameters but costs +125.8 G (attention on full maps)
            ref[1] = "w/o STC: +125.8"
        print(f"| {name} | {row['params_M']:.3f} | {ref[0]} | {row['GMACs']:.2f} | {ref[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
