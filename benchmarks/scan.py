"""Selective-scan speed and memory: our C++ kernel, our PyTorch op, the stock-op lowering, and today's baseline.

    python -m benchmarks.scan                 # all shapes (SelM 1x512x16 L=5; AVS-Mamba L=3920 and L=15680)
    python -m benchmarks.scan --shapes selm   # one shape

The baseline is the algorithm a user has today without a GPU: mamba_ssm's ``selective_scan_ref`` (materialise
exp(delta*A) and delta*B*u as (B, D, L, N), then loop over L), re-implemented here from its description.
Each measurement runs in a fresh subprocess; 'extra MB' is that process's peak RSS above its RSS once the inputs
exist. Times are the best of --repeat runs after two warm-ups; compare ratios within one run (machines are noisy).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {  # name: (batch, D, N, L)
    "selm": (1, 512, 16, 5),
    "avs-mamba-3920": (1, 2048, 16, 3920),
    "avs-mamba-15680": (1, 4096, 16, 15680),
}
METHODS = ("cpp-kernel", "torch-op", "lowered-ort", "baseline-ref")


def _inputs(batch: int, dim: int, dstate: int, length: int) -> dict:
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "u": rng.standard_normal((batch, dim, length), dtype=f32),
        "delta": rng.uniform(-4.0, 1.0, (batch, dim, length)).astype(f32),
        "A": -np.tile(np.arange(1, dstate + 1, dtype=f32), (dim, 1)),
        "B": rng.standard_normal((batch, dstate, length), dtype=f32),
        "C": rng.standard_normal((batch, dstate, length), dtype=f32),
        "D": np.ones(dim, f32),
        "z": rng.standard_normal((batch, dim, length), dtype=f32),
        "delta_bias": rng.uniform(-1.0, 0.0, dim).astype(f32),
    }


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _baseline(u, delta, A, B, C, D, z, delta_bias):
    """mamba_ssm's reference algorithm: (B, D, L, N) tensors, then a Python loop over L."""
    import torch
    import torch.nn.functional as F

    delta = F.softplus(delta + delta_bias[:, None])
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def _runner(method: str, data: dict, tmp: Path):
    """A zero-argument callable running one scan with ``method``."""
    if method in ("cpp-kernel", "lowered-ort"):
        import onnxruntime as ort

        from benchmarks.scan_graphs import scan_model

        path = tmp / f"{method}.onnx"
        scan_model(data, lowered=method == "lowered-ort").save(path)
        options = ort.SessionOptions()
        if method == "cpp-kernel":
            import plugins

            options.register_custom_ops_library(plugins.ort_library_path())
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {k: data[k] for k in ("u", "delta", "B", "C", "z")}
        return lambda: session.run(None, feeds)
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    if method == "torch-op":
        from export.ops.selective_scan import selective_scan

        return lambda: selective_scan(**tensors, delta_softplus=True)
    return lambda: _baseline(**tensors)


def _measure_one(method: str, shape: str, repeat: int, tmp: Path) -> dict:
    batch, dim, dstate, length = SHAPES[shape]
    data = _inputs(batch, dim, dstate, length)
    run = _runner(method, data, tmp)
    before = _rss_mb()
    times = []
    for _ in range(repeat + 2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    best = min(times[2:]) if repeat else times[-1]
    return {"seconds": best, "extra_mb": max(peak - before, 0.0), "updates": batch * dim * dstate * length}


def _child(method: str, shape: str, repeat: int) -> dict | None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.scan", "--child", method, shape, str(repeat), tmp],
                              capture_output=True, text=True)
    if proc.returncode:
        print(f"  {method} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the selective-scan backends on CPU.")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after two warm-ups (default 3)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        method, shape, repeat, tmp = args.child
        print(json.dumps(_measure_one(method, shape, int(repeat), Path(tmp))))
        return 0
    print(f"{'shape':<18}{'method':<14}{'time ms':>10}{'G updates/s':>13}{'extra MB':>10}{'vs baseline':>13}")
    for shape in args.shapes:
        results = {}
        for method in args.methods:
            if method == "lowered-ort" and SHAPES[shape][3] > 64:
                continue  # the lowering is for short scans only
            repeat = 1 if method == "baseline-ref" and SHAPES[shape][3] > 1000 else args.repeat
            results[method] = _child(method, shape, repeat)
        base = results.get("baseline-ref")
        for method, r in results.items():
            if r is None:
                continue
            ratio = f"{base['seconds'] / r['seconds']:.1f}x" if base else "-"
            print(f"{shape:<18}{method:<14}{r['seconds'] * 1e3:>10.2f}{r['updates'] / r['seconds'] / 1e9:>13.3f}"
                  f"{r['extra_mb']:>10.0f}{ratio:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
