"""SDAVS: registry and configs, shapes through every module, the selectors' gating, causality (the streaming
contract), full-size variants on the meta device, the parameter/MAC budget against the paper's Table X, ONNX
export parity of the tiny variant, a two-step training run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from export.models import create_model, list_models, pretrained_cfg
from export.models.sdavs import (DAMF, PAPER_BUDGET, SNRP, STC, AudioAttention, VGGishMap, budget_report)

VARIANTS = [f"sdavs-{s}-{b}" for s in ("s4", "ms3", "avss") for b in ("swinb", "pvt")]


def _quiet(name, checkpoint=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_model(name, checkpoint, **kw)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return _quiet("sdavs-test"), _quiet("vggish-test-map")


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 64, 64, generator=g), torch.rand(5, 1, 96, 64, generator=g) * 7.6 - 4.6


def test_registry_and_configs():
    assert set(VARIANTS + ["sdavs-s4-demo", "sdavs-test"]) == set(list_models("sdavs-*"))
    for name in VARIANTS:
        cfg = pretrained_cfg(name)
        assert (cfg.family, cfg.input_size, cfg.output_size, cfg.audio_encoder) == ("sdavs", 384, 224, "vggish-map")
        assert (cfg.frames_per_clip, cfg.num_classes) == ((10, 71) if "avss" in name else (5, 1))
        assert not cfg.file and not cfg.bundled                      # the authors released no weights
    assert pretrained_cfg("sdavs-s4-demo").bundled == "sdavs-s4-demo.pth"
    assert pretrained_cfg("vggish-demo-map").bundled == pretrained_cfg("vggish-demo").bundled


def test_options_are_checked():
    with pytest.raises(TypeError, match="no stochastic"):
        _quiet("sdavs-test", gumbel="sample")
    with pytest.raises(TypeError, match="unknown option"):
        _quiet("sdavs-test", mask_upsamples=2)
    model = _quiet("sdavs-test", dim=32, heads=4)
    assert model.cfg.dim == 32 and model.damf[0].audio_to_video.heads == 4


def test_vggish_map_loads_vggish_weights_and_returns_the_conv_map():
    plain = _quiet("vggish-test")
    mapped = _quiet("vggish-test-map", plain.state_dict())          # a VGGish checkpoint loads strictly
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        assert torch.equal(mapped(x), plain.features(x))
    assert mapped(x).shape == (3, 8, 6, 4) and isinstance(mapped, VGGishMap)
    with pytest.raises(ValueError, match="96, 64"):
        mapped(torch.randn(3, 1, 64, 96))


def test_module_shapes():
    torch.manual_seed(0)
    n, c = 4, 16
    visual, audio = torch.randn(n, c, 8, 8), torch.randn(n, c, 6, 4)
    assert AudioAttention(c, 2)(audio).shape == audio.shape
    out, audio_map, audio_low = SNRP(c, 4, 7)(visual, audio)
    assert out.shape == visual.shape and audio_map.shape == visual.shape and audio_low.shape == audio.shape
    assert STC(c, 3, 4)(visual, clips=2).shape == (n, 64, c)
    assert STC(c, 1, 4)(visual, clips=2, pool=4).shape == (n, 4, c)
    assert DAMF(c, 2, 4)(visual, audio_map, clips=1, kv_size=2).shape == visual.shape


def test_snrp_selectors_only_attenuate():
    torch.manual_seed(0)
    snrp = SNRP(16, 4, 7)
    visual = torch.randn(2, 16, 8, 8)
    out, _, _ = snrp(visual, torch.randn(2, 16, 6, 4))
    assert (out.abs() <= visual.abs()).all() and (out.abs() < visual.abs()).any()
    # silence the audio map: both gates become input-independent constants
    with torch.no_grad():
        snrp.audio_conv.weight.zero_()
    a, _, _ = snrp(visual, torch.randn(2, 16, 6, 4))
    b, _, _ = snrp(visual, torch.randn(2, 16, 6, 4))
    torch.testing.assert_close(a, b)


def test_stc_query_is_causal_and_starts_frame_local():
    torch.manual_seed(0)
    stc = STC(8, 3, 2)
    x = torch.randn(5, 8, 4, 4)
    base = stc(x, clips=1)
    y = x.clone()
    y[2] += 1.0
    with torch.no_grad():
        changed = (stc(y, clips=1) - base).abs().amax(dim=(1, 2))
    assert changed[:2].max() == 0 and changed[2] > 0 and changed[3:].max() == 0   # past taps start at zero
    with torch.no_grad():
        stc.conv.weight.normal_()
        base = stc(x, clips=1)
        changed = (stc(y, clips=1) - base).abs().amax(dim=(1, 2))
    assert changed[:2].max() == 0 and (changed[2:] > 0).all()                        # t sees t-2..t, not t+1
    # two clips in one batch do not see each other
    two = stc(torch.cat([x, y]), clips=2)
    torch.testing.assert_close(two[:5], base)


def test_forward_shapes_and_the_streaming_contract(tiny, clip):
    model, audio = tiny
    frames, log_mel = clip
    with torch.no_grad():
        amap = audio(log_mel)
        for m in model.damf:                  # non-zero past taps, so frames really mix
            for stc in (m.q_video, m.q_audio):
                stc.conv.weight.normal_(0, 0.3)
        logits = model(frames, amap)
        feats, tokens = model.encode_frames(frames, amap)
        full = model.fuse(feats, tokens)
        for k in (1, 3):                      # a window of the first k frames = the clip's first k rows
            part = model.fuse([f[:k] for f in feats], tokens[:k])
            torch.testing.assert_close(part, full[:k], atol=1e-5, rtol=1e-5)
        later = frames.clone()
        later[4] = 0
        moved = model(later, amap)
    assert logits.shape == (5, 1, 64, 64) and torch.isfinite(logits).all()
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
    assert tokens.shape == (5, 16, 6, 4) and full.shape == (5, 1, 16, 16)
    torch.testing.assert_close(moved[:4], logits[:4])                                 # the future is not seen
    assert not torch.allclose(moved[4], logits[4])
    with pytest.raises(ValueError, match="audio_map"):
        model(frames, torch.randn(5, 128))
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(5, 3, 32, 32), amap)


def test_validity_mask_zeroes_padding_frames(tiny, clip):
    model, audio = tiny
    valid = torch.tensor([True, True, True, False, False])
    with torch.no_grad():
        out = model(clip[0], audio(clip[1]), valid)
        ref = model(clip[0][:3], audio(clip[1][:3]))
    assert (out[3:] == 0).all()
    torch.testing.assert_close(out[:3], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sdavs-s4-swinb", "sdavs-ms3-pvt", "sdavs-avss-swinb"])
def test_full_size_variants_on_meta(name):
    cfg = pretrained_cfg(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name)
        t = cfg.frames_per_clip
        feats, audio = model.encode_frames(torch.zeros(t, 3, 384, 384), torch.zeros(t, 512, 6, 4))
        logits = model.decode(model.fuse(feats, audio))
    assert [f.shape[-1] for f in feats] == [96, 48, 24, 12] and audio.shape == (t, 256, 6, 4)
    assert logits.shape == (t, cfg.num_classes, 224, 224)


def test_budget_against_table_x():
    report = budget_report("sdavs-s4-swinb")
    paper_snrp, paper_damf = PAPER_BUDGET["SNRP"][0], PAPER_BUDGET["DAMF"][0]
    assert report["SNRP"]["params_M"] == pytest.approx(paper_snrp, rel=0.05)        # 2.54 vs 2.62 M
    assert report["DAMF"]["params_M"] == pytest.approx(paper_damf, rel=0.06)        # 2.32 vs 2.44 M
    assert report["STC"]["params_M"] == pytest.approx(PAPER_BUDGET["STC"][0], rel=0.1)
    assert report["backbone"]["GMACs"] / 5 == pytest.approx(47.1, rel=0.01)          # Swin-B at 384, per frame
    assert report["total"]["GMACs"] == pytest.approx(PAPER_BUDGET["total"][1], rel=0.05)
    assert report["DAMF"]["GMACs"] == pytest.approx(PAPER_BUDGET["DAMF"][1], rel=0.35)
    assert report["SNRP"]["GMACs"] < 0.5


def test_tiny_variant_exports_and_matches_onnx_runtime(tiny, clip, tmp_path):
    import onnxruntime as ort

    from export.onnx_export import export_graph, sdavs_graph_defs

    model, audio = tiny
    full = sdavs_graph_defs(model, audio)["full"]
    feeds = {"frames": clip[0].numpy(), "log_mel": clip[1].numpy()}
    path = export_graph(full, feeds, tmp_path, opset=18, scan="lowered", metadata={})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        want = full.module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert got.shape == want.shape == (5, 1, 64, 64)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_losses():
    from export.training.losses import iou_loss, sdavs_binary_loss, sdavs_semantic_loss

    target = (torch.rand(2, 16, 16) > 0.5).float()
    assert iou_loss(target, target) < 1e-3 and iou_loss(1 - target, target) > 0.99
    perfect = sdavs_binary_loss((target * 40 - 20).unsqueeze(1), target)
    assert set(perfect) == {"ce", "iou", "dice", "loss"} and perfect["loss"] < 0.01
    labels = torch.randint(0, 3, (2, 8, 8))
    good = sdavs_semantic_loss(torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 30, labels)
    bad = sdavs_semantic_loss(torch.zeros(2, 3, 8, 8), labels)
    assert good["loss"] < 0.05 < bad["loss"]


def test_two_training_steps(tmp_path):
    from export.training.trainer import TrainConfig, Trainer
    from runtime.datasets import synth

    data = tmp_path / "synth"
    synth.write_dataset(data, "s4", 4, seed=5, split="train", progress=False)
    synth.write_dataset(data, "s4", 2, seed=5, split="val", progress=False)
    vggish = tmp_path / "vggish.pth"
    torch.save(_quiet("vggish-test").state_dict(), vggish)
    cfg = TrainConfig(model="sdavs-test", data=str(data), out=str(tmp_path / "run"), epochs=1, batch=2, lr=3e-3,
                      vggish=str(vggish), device="cpu", seed=0)
    trainer = Trainer(cfg, progress=False)
    assert trainer.recipe.loss == "sdavs-binary" and trainer.recipe.lr == 5e-5
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = trainer.fit()
    assert record["epochs"][0]["train"]["clips"] == 4 and np.isfinite(record["epochs"][0]["train"]["loss"])
    assert {"ce", "iou", "dice"} <= set(record["epochs"][0]["train"])
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("damf.") for k in changed) and any(k.startswith("snrp.") for k in changed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_model("sdavs-test", tmp_path / "run" / "best.pth")
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in loaded.state_dict().items())
    saved = json.loads((tmp_path / "run" / "train_record.json").read_text())
    assert saved["recipe"]["loss"] == "sdavs-binary"


def test_shipped_demo_weights_load_strictly():
    path = pretrained_cfg("sdavs-s4-demo").bundled_path
    if not Path(path).is_file():
        pytest.skip(f"{path} not made yet (python -m export.train_sdavs_demo --ship)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model("sdavs-s4-demo", path)
    assert sum(p.numel() for p in model.parameters()) < 1e6


@pytest.mark.slow
def test_artifact_streams_like_the_full_model(tmp_path):
    """build_engine's artifact of the tiny variant: the runtime's streaming split (encoder per frame, the fusion
    decoder over the window, resize) gives every frame of a clip the PyTorch model's probabilities."""
    from export.build_engine import build_artifact
    from runtime import Segmenter
    from runtime.manifest import load_manifest
    from runtime.segmenter import preprocess_frame

    torch.manual_seed(0)
    model, audio = _quiet("sdavs-test"), _quiet("vggish-test-map")
    with torch.no_grad():
        for m in model.damf:                  # non-zero past taps, so the window matters
            for stc in (m.q_video, m.q_audio):
                stc.conv.weight.normal_(0, 0.3)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    torch.save(audio.state_dict(), tmp_path / "audio.pth")
    out = build_artifact("sdavs-test", tmp_path / "art", checkpoint=tmp_path / "model.pth",
                         vggish=tmp_path / "audio.pth")
    manifest = load_manifest(out)
    assert manifest.streaming.carry == ["feat1", "feat2", "feat3", "feat4", "audio"]
    assert all(r.passed for r in manifest.validation)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    log_mel = rng.uniform(-4.6, 3.0, (5, 1, 96, 64)).astype(np.float32)
    seg = Segmenter(out, backend="onnxruntime")
    try:
        results = seg.segment_log_mel(images, log_mel)
    finally:
        seg.close()
    frames = torch.from_numpy(np.concatenate([preprocess_frame(i, manifest.video) for i in images]))
    with torch.no_grad():
        want = torch.sigmoid(model(frames, audio(torch.from_numpy(log_mel))))[:, 0].numpy()
    for k, result in enumerate(results):
        np.testing.assert_allclose(result.probabilities, want[k], atol=1e-4)
