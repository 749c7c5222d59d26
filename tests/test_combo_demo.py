"""The shipped ``combo-s4-demo`` weights (made by python -m export.train_combo_demo --ship): they load strictly, are
recorded, and through the exported artifact (over-segmentation Maskiges) they segment what sounds."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from export.models import create_model, pretrained_cfg

WEIGHTS = pretrained_cfg("combo-s4-demo").bundled_path
RECORD = WEIGHTS.with_suffix(".json")


def _shipped() -> Path:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} not made yet (python -m export.train_combo_demo --ship)")
    return WEIGHTS


def test_shipped_weights_are_small_strict_and_recorded():
    path = _shipped()
    assert path.stat().st_size < 20e6
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no random-weights warning: strict, complete load
        model = create_model("combo-s4-demo", path)
    assert model.cfg.resolution == 128 and model.cfg.num_queries == 20
    vggish = torch.load(pretrained_cfg("vggish-demo").bundled_path, weights_only=True)
    assert all(torch.equal(state[f"audio_backbone.{k}"], v) for k, v in vggish.items())     # frozen in training
    record = json.loads(RECORD.read_text())
    assert record["command"].startswith("python -m export.train_combo_demo")
    assert set(record["seeds"]) == {"data", "test_data", "training"}
    assert record["seeds"]["data"] != record["seeds"]["test_data"]
    assert record["times"]["train_seconds"] > 0 and record["test_onnxruntime"]["normal"]["clips"] >= 300


@pytest.mark.slow
def test_shipped_demo_model_segments_through_the_artifact(tmp_path):
    """A freshly generated 30-clip test set (a seed no record mentions) through the exported artifact, with its
    default ``overseg`` Maskiges: far above predicting background everywhere, and quiet in the silent seconds."""
    from export.build_engine import build_artifact
    from runtime.datasets import synth
    from runtime.datasets.avsbench import AVSBench
    from runtime.evaluate import evaluate, segmenter_predictor
    from runtime.segmenter import Segmenter

    _shipped()
    synth.write_dataset(tmp_path / "data", "s4", 30, seed=23, split="test", progress=False)
    artifact = build_artifact("combo-s4-demo", tmp_path / "art", say=lambda line: None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["model"]["random_weights"] is False
    assert manifest["maskige"]["default_source"] == "overseg"
    data = AVSBench(tmp_path / "data", "s4", "test", 128)
    with Segmenter(artifact, backend="onnxruntime", say=lambda line: None) as seg:
        normal = evaluate(data, segmenter_predictor(seg), progress=False)
    background = evaluate(data, lambda clip: np.zeros((clip.num_frames, 224, 224), np.float32), progress=False)
    mj, floor = normal["metrics"]["official"]["M_J"], background["metrics"]["official"]["M_J"]
    assert mj > floor + 0.2, f"M_J {mj:.3f} vs {floor:.3f} predicting background everywhere"
    assert normal["silence"]["frames"] > 0 and normal["silence"]["mean_area"] < 0.1
