"""An fp64 loop of the selective-scan contract, random inputs for it, and the case grid every scan backend runs."""
from __future__ import annotations

import itertools

import numpy as np

LENGTHS = (1, 2, 5, 63, 2048, 2049, 15680)
#: (L, N, G) cases; G = 0 is the ungrouped (batch, N, L) form of B and C.
GRID = list(itertools.product(LENGTHS, (1, 16), (0, 4)))
GRID_IDS = [f"L{length}-N{n}-G{g}" for length, n, g in GRID]


def grid_flags(index: int, length: int) -> dict:
    """Optional inputs, softplus and fp16 for grid case ``index``, spread so that every combination appears."""
    bits = [((index * 7 + length) >> k) & 1 for k in range(5)]
    return dict(with_z=bool(bits[0]), with_d=bool(bits[1]), with_bias=bool(bits[2]), softplus=bool(bits[3]),
                dtype=np.float16 if bits[4] else np.float32)


def scan_fp64(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> np.ndarray:
    """plugins/selective_scan/README.md, literally: a loop over L in float64 (numpy arrays in, float64 out)."""
    u, delta, A, B, C = (np.asarray(t, dtype=np.float64) for t in (u, delta, A, B, C))
    bt, d, length = u.shape
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)[:, None]
    if delta_softplus:
        delta = np.where(delta <= 20.0, np.log1p(np.exp(np.minimum(delta, 20.0))), delta)
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    per_group = d // B.shape[1]
    B, C = np.repeat(B, per_group, axis=1), np.repeat(C, per_group, axis=1)      # (Bt, D, N, L)
    x = np.zeros((bt, d, A.shape[1]))
    y = np.empty((bt, d, length))
    for step in range(length):
        dt = delta[:, :, step, None]
        x = np.exp(dt * A) * x + dt * B[:, :, :, step] * u[:, :, step, None]
        y[:, :, step] = (x * C[:, :, :, step]).sum(-1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)[:, None]
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y


def make_inputs(rng: np.random.Generator, *, batch=1, dim=8, length=5, dstate=16, groups=0, with_d=True,
                with_z=True, with_bias=True, softplus=True, dtype=np.float32) -> dict:
    """Random scan inputs in mamba's ranges; ``groups=0`` gives the ungrouped (batch, N, L) form of B and C.

    With ``softplus`` delta is a raw pre-activation (negative too); without it delta (+ bias) is a positive step.
    """
    low, high = (-4.0, 1.0) if softplus else (0.0, 0.5)
    bc_shape = (batch, groups, dstate, length) if groups else (batch, dstate, length)
    data = {
        "u": rng.standard_normal((batch, dim, length)),
        "delta": rng.uniform(low, high, (batch, dim, length)),
        "A": -np.exp(rng.uniform(0.0, np.log(dstate + 1.0), (dim, dstate))),
        "B": rng.standard_normal(bc_shape),
        "C": rng.standard_normal(bc_shape),
        "D": rng.standard_normal(dim) if with_d else None,
        "z": rng.standard_normal((batch, dim, length)) if with_z else None,
        "delta_bias": rng.uniform(low / 4, high / 4, dim) if with_bias else None,
    }
    fp32_only = ("A", "D", "delta_bias")
    return {k: None if v is None else v.astype(np.float32 if k in fp32_only else dtype) for k, v in data.items()}
