"""The shipped demo weights (selm-s4-demo + vggish-demo, made by python -m export.train_demo --ship): small,
loadable with weights_only, recorded, and through the exported artifact they segment what sounds."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from export.models import create_model, pretrained_cfg

RECORD = Path(__file__).resolve().parents[1] / "export" / "weights" / "selm-s4-demo.json"


def test_shipped_weights_are_small_strict_and_recorded():
    for name in ("selm-s4-demo", "vggish-demo"):
        path = pretrained_cfg(name).bundled_path
        assert path.is_file() and path.stat().st_size < 20e6
        state = torch.load(path, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        with warnings.catch_warnings():
            warnings.simplefilter("error")                  # no random-weights warning: strict, complete load
            create_model(name, path)
    record = json.loads(RECORD.read_text())
    assert record["command"].startswith("python -m export.train_demo")
    assert set(record["seeds"]) == {"data", "test_data", "training"}
    assert record["seeds"]["data"] != record["seeds"]["test_data"]
    assert record["times"]["train_seconds"] > 0 and record["test_onnxruntime"]["normal"]["clips"] >= 300


@pytest.mark.slow
def test_shipped_demo_model_listens_through_the_artifact(tmp_path):
    """A freshly generated 40-clip test set (a seed no record mentions), scored through the exported artifact."""
    from export.build_engine import build_artifact
    from runtime.datasets import synth
    from runtime.datasets.avsbench import AVSBench
    from runtime.evaluate import evaluate, segmenter_predictor
    from runtime.segmenter import Segmenter

    synth.write_dataset(tmp_path / "data", "s4", 40, seed=23, split="test", progress=False)
    artifact = build_artifact("selm-s4-demo", tmp_path / "art", say=lambda line: None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["model"]["random_weights"] is False
    data = AVSBench(tmp_path / "data", "s4", "test", 128)
    seg = Segmenter(artifact, backend="onnxruntime")
    try:
        normal = evaluate(data, segmenter_predictor(seg), progress=False)
        swapped = evaluate(data, segmenter_predictor(seg), progress=False, swap_audio=True)
    finally:
        seg.close()
    mj = normal["metrics"]["official"]["M_J"]
    assert mj >= 0.7
    assert swapped["metrics"]["official"]["M_J"] < mj - 0.15
    assert normal["silence"]["frames"] > 0 and normal["silence"]["mean_area"] < 0.05
