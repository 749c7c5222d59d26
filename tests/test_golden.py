"""Golden tensors: the tiny test variants (``selm-test``, ``vggish-test``) must reproduce every stored stage at 1e-5.

The weights, inputs and outputs live in ``tests/golden/<variant>.npz``; ``tests/golden/make_golden.py`` wrote them
and documents how to regenerate them. A change to any stage's numerics (backbone, DAM, BCSM, decoder, Gumbel
assignment, VGGish) or to the architecture (the stored state_dict no longer loads strictly) fails here.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
TOL = 1e-5


def _golden():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _golden()


def _mismatches(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[str]:
    """Names (with the max abs difference) of the stages that differ beyond ``TOL``."""
    assert sorted(got) == sorted(expected), "the set of stored stages changed; regenerate the golden files"
    bad = []
    for stage, want in expected.items():
        assert got[stage].shape == want.shape, f"{stage}: shape {got[stage].shape} vs golden {want.shape}"
        if not np.allclose(got[stage], want, rtol=TOL, atol=TOL):
            bad.append(f"{stage} (max abs diff {np.abs(got[stage] - want).max():.3g})")
    return bad


@pytest.mark.parametrize("name", golden.VARIANTS)
def test_every_stage_matches_the_golden_tensors(name):
    weights, inputs, expected = golden.load(name)
    got = golden.stage_outputs(name, weights, inputs)
    assert not _mismatches(expected, got), f"{name}: stages changed: {_mismatches(expected, got)}"


def test_a_change_in_one_stage_is_caught_exactly_where_it_propagates():
    weights, inputs, expected = golden.load("selm-test")
    weights = dict(weights)
    key = "tem_att.vis_linear.0.bias"                     # the temporal stage: the encoder is unaffected
    weights[key] = weights[key].clone()
    weights[key][0] += 1e-2                               # one channel (a uniform shift would vanish in LayerNorm)
    bad = {entry.split(" ")[0] for entry in _mismatches(expected, golden.stage_outputs("selm-test", weights, inputs))}
    assert bad == {"audio_out", "logits", "logits_gumbel"}    # the video gates gate the audio token only


def test_golden_weights_do_not_come_from_the_rng():
    weights, _, _ = golden.load("vggish-test")
    torch.manual_seed(12345)                               # another seed must not matter: weights are stored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = golden.build("vggish-test", weights)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_golden_files_stay_small():
    total = sum(p.stat().st_size for p in GOLDEN.glob("*.npz"))
    assert sorted(p.stem for p in GOLDEN.glob("*.npz")) == sorted(golden.VARIANTS)
    assert total < 768 * 1024, f"golden files take {total / 1024:.0f} KiB; keep them well under 1 MB"
