"""The PyTorch op ``avs::selective_scan`` against the fp64 loop of the contract, and its input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export.ops.selective_scan import scan_reference, selective_scan
from plugins.scan_contract import INPUT_NAMES
from tests.scan_grid import GRID, GRID_IDS, grid_flags, make_inputs, scan_fp64


def _torch_args(data: dict) -> list:
    return [None if data[k] is None else torch.from_numpy(data[k]) for k in INPUT_NAMES]


@pytest.mark.parametrize("index,case", list(enumerate(GRID)), ids=GRID_IDS)
def test_op_matches_fp64_loop(index, case):
    length, dstate, groups = case
    flags = grid_flags(index, length)
    rng = np.random.default_rng(index)
    data = make_inputs(rng, batch=2 if length < 100 else 1, dim=8, length=length, dstate=dstate, groups=groups,
                       with_d=flags["with_d"], with_z=flags["with_z"], with_bias=flags["with_bias"],
                       softplus=flags["softplus"], dtype=flags["dtype"])
    y = selective_scan(*_torch_args(data), delta_softplus=flags["softplus"])
    expected = scan_fp64(**data, delta_softplus=flags["softplus"])
    assert y.dtype == torch.from_numpy(data["u"]).dtype and y.shape == data["u"].shape
    err = np.abs(y.double().numpy() - expected)
    # fp32 state: rounding grows with L; fp16 outputs carry 2^-11 relative rounding
    rtol, atol = (2e-3, 2e-3) if flags["dtype"] == np.float16 else (1e-4, 1e-4)
    print(f"L={length} N={dstate} G={groups} {flags}: max abs err {err.max():.2e}")
    assert np.all(err <= atol + rtol * np.abs(expected)), f"max abs err {err.max():.3e}"


def test_chunking_does_not_change_results():
    data = make_inputs(np.random.default_rng(1), dim=4, length=100, dstate=16, groups=2)
    args = _torch_args(data)
    whole = scan_reference(*args, delta_softplus=True, chunk=1000)
    torch.testing.assert_close(scan_reference(*args, delta_softplus=True, chunk=7), whole, rtol=0, atol=1e-6)


def _valid():
    return _torch_args(make_inputs(np.random.default_rng(2), dim=8, length=5, dstate=4))


@pytest.mark.parametrize("position,bad,message", [
    (0, torch.zeros(1, 8, 0), "L = 0"),
    (1, torch.zeros(1, 8, 4), "delta must be"),
    (2, torch.zeros(7, 4), "A must be"),
    (2, torch.zeros(8, 4, dtype=torch.float64), "A must be"),
    (3, torch.zeros(1, 3, 4, 5), "does not divide D=8"),
    (3, torch.zeros(1, 5, 5), "B must be"),
    (4, torch.zeros(1, 4, 5, dtype=torch.float16), "C must have u's dtype"),
    (5, torch.zeros(9), "D must be"),
    (6, torch.zeros(1, 8, 6), "z must be"),
    (7, torch.zeros(8, dtype=torch.float16), "delta_bias must be"),
    (0, torch.zeros(1, 8, 5, dtype=torch.int32), "float32 or float16"),
])
def test_bad_input_names_the_problem(position, bad, message):
    args = _valid()
    if position == 0 and bad.shape[-1] == 0:
        args[1] = torch.zeros(1, 8, 0)
        args[3] = args[4] = torch.zeros(1, 4, 0)
    args[position] = bad
    with pytest.raises(ValueError, match=message):
        selective_scan(*args)


def test_grouped_b_and_c_must_agree():
    args = _valid()
    args[4] = torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match="B has 1 groups but C has 2"):
        selective_scan(*args)
