"""AVS-Mamba through export and the runtime: ``build_artifact`` on the tiny variant (scans as plugin nodes, ONNX
Runtime vs PyTorch, the non-causal streaming split), the scan choice, the weights it loads, and the Segmenter's
sliding window against the full graph."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.build_engine import UserError, choose_scan, load_models
from export.models import create_model, pretrained_cfg
from export.models import avs_mamba as am
from export.onnx_export import longest_scan
from export.validate import ort_session, run_ort
from runtime.manifest import ManifestError, load_manifest
from runtime.segmenter import Segmenter, preprocess_frame

MODEL = "avs-mamba-test"


@pytest.fixture
def artifact(avs_mamba_artifact) -> Path:
    return avs_mamba_artifact


def test_longest_scan_is_the_models_longest(monkeypatch) -> None:
    lengths = []
    real = am.selective_scan

    def spy(u, *args, **kwargs):
        lengths.append(u.shape[-1])
        return real(u, *args, **kwargs)

    monkeypatch.setattr(am, "selective_scan", spy)
    cfg = pretrained_cfg(MODEL)
    torch.manual_seed(0)
    model = create_model(MODEL).eval()
    r = cfg.input_size
    with torch.inference_mode():
        model(torch.randn(cfg.frames_per_clip, 3, r, r), torch.randn(cfg.frames_per_clip, 1, 96, 64))
    assert max(lengths) == longest_scan(cfg) == 5 * (16 * 16 + 1)
    assert longest_scan(pretrained_cfg("avs-mamba-s4-pvt")) == 15685       # the spec's largest (§6)
    assert longest_scan(pretrained_cfg("selm-s4-r50")) == 5


def test_scan_choice() -> None:
    said = []
    assert choose_scan("auto", pretrained_cfg(MODEL), said.append) == "plugin"
    assert "too long to lower" in said[0] and "avs::SelectiveScan" in said[0]
    with pytest.raises(UserError, match="--scan lowered: .*1285 steps.*--scan plugin"):
        choose_scan("lowered", pretrained_cfg(MODEL), said.append)
    assert choose_scan("auto", pretrained_cfg("selm-test"), said.append) == "lowered"


def test_gumbel_is_refused_and_vggish_loads_into_the_model(tmp_path) -> None:
    with pytest.raises(UserError, match="--gumbel input: avs-mamba-test has no Gumbel noise"):
        load_models(MODEL, None, None, "input", lambda line: None)
    torch.manual_seed(3)
    vggish = create_model("vggish-test")
    torch.save(vggish.state_dict(), tmp_path / "vggish.pth")
    said = []
    model, audio = load_models(MODEL, None, tmp_path / "vggish.pth", "none", said.append)
    assert audio is model.audio_backbone
    for key, value in vggish.state_dict().items():
        assert torch.equal(model.audio_backbone.state_dict()[key], value), key
    assert not any("no --vggish" in line for line in said)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="--vggish: .*features"):
        load_models(MODEL, None, tmp_path / "wrong.pth", "none", said.append)


def test_official_layout_loads_through_the_registered_filter(tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model(MODEL)
    official = {f"module.{k}": v for k, v in model.state_dict().items()}
    official["module.query_embed.weight"] = torch.zeros(1, 16)          # the semantic model's training-only head
    torch.save({"model": official}, tmp_path / "official.pth")
    loaded = create_model(MODEL, tmp_path / "official.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_artifact_is_validated_with_plugin_scans(artifact) -> None:
    manifest = load_manifest(artifact)
    assert manifest.scan == "plugin" and manifest.validated
    assert [r.graph for r in manifest.validation] == ["full", "encoder", "temporal", "decoder", "streaming"]
    assert manifest.streaming.fill == "repeat-oldest"
    assert manifest.streaming.carry == ["map1", "map2", "map3", "map4", "audio"]
    scans = {role: sum(n.op_type == "SelectiveScan" for n in onnx.load(str(artifact / spec.file),
                                                                       load_external_data=False).graph.node)
             for role, spec in manifest.graphs.items()}
    assert scans == {"full": 24, "encoder": 0, "temporal": 24, "decoder": 0}


def test_manifest_window_fill_is_checked(artifact, tmp_path) -> None:
    data = json.loads((artifact / "manifest.json").read_text())
    data["streaming"]["fill"] = "sideways"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="streaming.fill: unknown window fill 'sideways'"):
        load_manifest(tmp_path, allow_unvalidated=True)


def test_sliding_window_equals_the_full_graph(artifact) -> None:
    """Frame T-1 of a clip equals the full graph's newest frame; frame 0 equals a clip of frame 0 repeated T
    times (the warm-up fill), through the runtime's Segmenter."""
    manifest = load_manifest(artifact)
    t, r = manifest.streaming.window, manifest.video.resolution
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8) for _ in range(t)]
    log_mel = rng.uniform(-4.6, 3.0, size=(t, 1, 96, 64)).astype(np.float32)
    with Segmenter(artifact, backend="onnxruntime", precision="fp32") as segmenter:
        results = segmenter.segment_log_mel(images, log_mel)
    frames = np.concatenate([preprocess_frame(image, manifest.video) for image in images])
    assert frames.shape == (t, 3, r, r)
    full = ort_session(artifact / manifest.graph("full").file)

    def probability(clip: np.ndarray, mel: np.ndarray) -> np.ndarray:
        logits = run_ort(full, {"frames": clip, "log_mel": mel})["logits"][-1, 0]
        return 1 / (1 + np.exp(-logits.astype(np.float64)))

    np.testing.assert_allclose(results[-1].probabilities, probability(frames, log_mel), atol=1e-5)
    first = probability(np.repeat(frames[:1], t, axis=0), np.repeat(log_mel[:1], t, axis=0))
    np.testing.assert_allclose(results[0].probabilities, first, atol=1e-5)
    assert not np.allclose(results[0].probabilities, results[-1].probabilities, atol=1e-3)
