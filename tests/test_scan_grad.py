"""The backward of ``avs::selective_scan``: torch.autograd.gradcheck in fp64 over the scan grid, and its memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export.ops.selective_scan import selective_scan
from scan_grid import GRID, GRID_IDS, grid_flags, make_inputs

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _fp64_args(index: int, length: int, dstate: int, groups: int, batch: int = 2, dim: int = 8):
    flags = grid_flags(index, length)
    flags.pop("dtype")
    data = make_inputs(np.random.default_rng(index), batch=batch, dim=dim, length=length, dstate=dstate,
                       groups=groups, **flags)
    args = [None if data[k] is None else torch.tensor(data[k], dtype=torch.float64, requires_grad=True)
            for k in NAMES]
    return args, flags["softplus"]


CASES = [pytest.param(i, case, id=name, marks=[pytest.mark.slow] if case[0] > 2049 else [])
         for i, (case, name) in enumerate(zip(GRID, GRID_IDS))]


@pytest.mark.parametrize("index,case", CASES)
def test_gradcheck_over_the_grid(index, case):
    length, dstate, groups = case
    long = length > 63
    args, softplus = _fp64_args(index, length, dstate, groups, batch=1 if long else 2, dim=4 if long else 8)
    # Full Jacobians for short scans; for long ones gradcheck's fast mode (a random projection of the Jacobian
    # against finite differences along one random direction), which still compares every input's gradient.
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, delta_softplus=softplus), args, eps=1e-6,
                                    atol=1e-6, rtol=1e-5, fast_mode=length > 2)


def test_backward_keeps_only_the_inputs():
    """No (Bt, D, L, N) tensor survives the forward: autograd holds the op's inputs and nothing else."""
    args, softplus = _fp64_args(3, 2049, 16, 0, batch=1, dim=16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = selective_scan(*args, delta_softplus=softplus)
    assert sum(saved) <= sum(a.numel() for a in args if a is not None)
    y.sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in args if a is not None)


def test_fp32_gradient_matches_fp64():
    args, softplus = _fp64_args(5, 70, 16, 4)
    selective_scan(*args, delta_softplus=softplus).square().sum().backward()
    ref = [a.grad.clone() for a in args if a is not None]
    args32 = [a.detach().float().requires_grad_() if a is not None else None for a in args]
    selective_scan(*args32, delta_softplus=softplus).square().sum().backward()
    for a, r in zip([a for a in args32 if a is not None], ref):
        assert torch.allclose(a.grad.double(), r, rtol=1e-3, atol=1e-3 * r.abs().max().item())
