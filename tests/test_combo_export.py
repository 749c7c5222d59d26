"""COMBO through export: ``build_artifact`` on the tiny variant (a Maskige input, a one-frame window, stock ops),
the binary variants' exported logit against the official evaluator's rule, and the manifest's Maskige entry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.build_engine import UserError, load_models
from export.models import create_model, pretrained_cfg
from export.models.combo import output_logits
from export.validate import ort_session, run_ort
from runtime.manifest import ManifestError, load_manifest


def test_artifact_layout(combo_artifact: Path) -> None:
    manifest = load_manifest(combo_artifact)
    assert manifest.validated and manifest.scan == "lowered"
    assert [r.graph for r in manifest.validation] == ["full", "encoder", "temporal", "decoder", "streaming"]
    assert (manifest.streaming.window, manifest.streaming.decode_index, manifest.streaming.fill) == (1, 0, "leading")
    assert manifest.streaming.carry == ["mask_features", "audio"]
    assert manifest.maskige is not None and manifest.maskige.input == "maskige"
    assert manifest.maskige.default_source == "overseg" and "Semantic-SAM" in manifest.maskige.trained_with
    for role in ("full", "encoder"):
        spec = manifest.graph(role).input("maskige")
        assert spec.shape == [1, 3, 64, 64] and spec.dtype == "float32"
    assert manifest.graph("full").outputs[0].shape == [1, 1, 64, 64]
    assert (manifest.output.kind, manifest.output.num_classes, manifest.output.threshold) == ("binary", 1, 0.5)


def test_exported_logit_is_the_official_object_probability(combo_artifact: Path) -> None:
    """sigmoid(logit) of the ONNX graph equals softmax over COMBO's two scores, class 1, of the PyTorch model."""
    manifest = load_manifest(combo_artifact)
    torch.manual_seed(manifest.model.weights_seed)
    with pytest.warns(UserWarning, match="random weights"):
        model = create_model("combo-test").eval()
    rng = np.random.default_rng(2)
    feeds = {"frames": rng.standard_normal((1, 3, 64, 64), dtype=np.float32),
             "maskige": rng.standard_normal((1, 3, 64, 64), dtype=np.float32),
             "log_mel": rng.uniform(-4.6, 3.0, size=(1, 1, 96, 64)).astype(np.float32)}
    logit = run_ort(ort_session(combo_artifact / "model.onnx"), feeds)["logits"]
    with torch.inference_mode():
        scores = model(*(torch.from_numpy(feeds[k]) for k in ("frames", "maskige", "log_mel")))
    official = scores.softmax(dim=1)[:, 1:2].numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logit.astype(np.float64))), official, atol=1e-5)
    other = dict(feeds, maskige=rng.standard_normal((1, 3, 64, 64), dtype=np.float32))
    assert not np.allclose(run_ort(ort_session(combo_artifact / "model.onnx"), other)["logits"], logit, atol=1e-4)


def test_output_logits() -> None:
    scores = torch.tensor([[[[0.2]], [[0.7]]]])
    assert torch.allclose(output_logits(scores, "binary"), torch.tensor([[[[0.5]]]]))
    assert output_logits(scores, "semantic") is scores
    assert pretrained_cfg("combo-avss-pvt").output_kind == "semantic"


def test_gumbel_refused_and_vggish_loads_into_the_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--gumbel input: combo-test has no Gumbel noise"):
        load_models("combo-test", None, None, "input", lambda line: None)
    torch.manual_seed(5)
    with pytest.warns(UserWarning):
        vggish = create_model("vggish-test")
    torch.save(vggish.state_dict(), tmp_path / "vggish.pth")
    model, audio = load_models("combo-test", None, tmp_path / "vggish.pth", "none", lambda line: None)
    assert audio is model.audio_backbone
    assert all(torch.equal(model.audio_backbone.state_dict()[k], v) for k, v in vggish.state_dict().items())


def test_manifest_maskige_entry_is_checked(combo_artifact: Path, tmp_path: Path) -> None:
    data = json.loads((combo_artifact / "manifest.json").read_text())
    del data["maskige"]["default_source"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="maskige.default_source: required field missing"):
        load_manifest(tmp_path, allow_unvalidated=True)
