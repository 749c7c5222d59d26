"""SelM behaviour: shapes, determinism, Gumbel modes, the streaming split, AVSS validity, folding, input errors."""
from __future__ import annotations

import warnings

import pytest
import torch

from export.models import PretrainedCfg, create_model, list_models, model_builder, pretrained_cfg, register_model
from export.models.selm import DAMFusionBlock, hard_assign

FAST = "selm-s4-r50"
ATOL = 1e-5  # batch-size dependent kernels (conv, matmul) may round differently; the math is identical


def _quiet(name, checkpoint=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_model(name, checkpoint, **kw)


def _clip(frames, resolution, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 3, resolution, resolution, generator=g), torch.rand(frames, 128, generator=g) * 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _quiet(FAST)


@pytest.fixture(scope="module")
def clip():
    return _clip(5, 224)


@pytest.fixture(scope="module")
def stages(model, clip):
    with torch.inference_mode():
        maps, pooled, audio = model.encode_frames(*clip)
        gates, audio_out = model.temporal(pooled, audio)
    return maps, pooled, audio, gates, audio_out


@pytest.fixture(scope="module")
def logits(model, clip):
    with torch.inference_mode():
        return model(*clip)


def _decode_last(model, stages, **kw):
    maps, _, _, gates, audio_out = stages
    with torch.inference_mode():
        return model.decode_frames([m[-1:] for m in maps], gates[-1:], audio_out[-1:], **kw)


def test_forward_shape_and_values(model, logits):
    assert logits.shape == (5, 1, 224, 224) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


def test_stages_compose_to_forward(model, stages, logits):
    maps, _, _, gates, audio_out = stages
    assert [tuple(m.shape) for m in maps] == [(5, 256, 56, 56), (5, 256, 28, 28), (5, 256, 14, 14), (5, 256, 7, 7)]
    with torch.inference_mode():
        assert torch.equal(model.decode_frames(maps, gates, audio_out), logits)


def test_none_mode_is_deterministic_and_decoding_the_last_frame_matches_forward(model, stages, logits):
    last = _decode_last(model, stages)
    assert torch.equal(last, _decode_last(model, stages))
    torch.testing.assert_close(last, logits[-1:], atol=ATOL, rtol=0)


def test_encoding_frames_one_at_a_time_equals_the_clip(model, clip, stages):
    frames, audio = clip
    with torch.inference_mode():
        singles = [model.encode_frames(frames[i:i + 1], audio[i:i + 1]) for i in range(5)]
    for s in range(4):      # NOTE: batch-dependent accumulation order: the error scales with the map's largest value
        scale = float(stages[0][s].abs().max())
        torch.testing.assert_close(torch.cat([m[s] for m, _, _ in singles]), stages[0][s], atol=ATOL * scale, rtol=0)
    torch.testing.assert_close(torch.cat([p for _, p, _ in singles]), stages[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([a for _, _, a in singles]), stages[2], atol=ATOL, rtol=0)


def test_temporal_is_causal(model, stages):
    _, pooled, audio, gates, audio_out = stages
    later_pooled, later_audio = pooled.clone(), audio.clone()
    later_pooled[3:] += 1.0
    later_audio[3:] += 1.0
    with torch.inference_mode():
        g3, a3 = model.temporal(pooled[:3], audio[:3])
        g_audio, _ = model.temporal(pooled, later_audio)       # audio gates follow the audio tokens
        _, a_pooled = model.temporal(later_pooled, audio)      # the audio output follows the video gates
    torch.testing.assert_close(g3, gates[:3], atol=ATOL, rtol=0)
    torch.testing.assert_close(a3, audio_out[:3], atol=ATOL, rtol=0)
    torch.testing.assert_close(g_audio[:3], gates[:3], atol=ATOL, rtol=0)
    torch.testing.assert_close(a_pooled[:3], audio_out[:3], atol=ATOL, rtol=0)
    assert not torch.allclose(g_audio[3:], gates[3:]) and not torch.allclose(a_pooled[3:], audio_out[3:])


def test_input_mode_equals_sample_mode_given_the_same_noise(model, stages):
    weights = model.state_dict()
    sampler = _quiet(FAST, weights, gumbel="sample").manual_seed(7)
    taker = _quiet(FAST, weights, gumbel="input")
    noise = taker.sample_gumbel_noise(1, torch.Generator().manual_seed(7))
    assert noise.shape == taker.gumbel_noise_shape(1) == (1, 2, 14 * 14 + 28 * 28 + 56 * 56)
    sampled = _decode_last(sampler, stages)
    assert torch.equal(sampled, _decode_last(taker, stages, gumbel_noise=noise))
    other = _decode_last(taker, stages, gumbel_noise=torch.rand(noise.shape).clamp(1e-6, 1 - 1e-6))
    assert not torch.equal(sampled, other)
    sampler.manual_seed(7)
    assert torch.equal(sampled, _decode_last(sampler, stages))


def test_hard_assign_rules():
    logits = torch.tensor([[[0.5, 0.2, 0.3], [0.5, 0.1, 0.9]]])                  # [T=1, 2 tokens, 3 pixels]
    assert hard_assign(logits, None, torch.ones(1)).tolist() == [[[1, 1, 0], [0, 0, 1]]]   # tie -> token 0
    gumbel = torch.tensor([[[0.0, 0.0, 1.0], [0.2, 0.0, 0.0]]])
    assert hard_assign(logits, gumbel, torch.ones(1)).tolist() == [[[0, 1, 1], [1, 0, 0]]]


def test_avss_validity_mask():
    torch.manual_seed(0)
    avss = _quiet("selm-avss-r50")
    frames, audio = _clip(2, 224, seed=3)
    with torch.inference_mode():
        maps, pooled, a = avss.encode_frames(frames, audio)
        maps1, pooled1, a1 = avss.encode_frames(frames, audio, valid=torch.ones(2, dtype=torch.bool))
        assert torch.equal(pooled, pooled1) and torch.equal(a, a1)
        gates, a_out = avss.temporal(pooled, a)
        out = avss.decode_frames(maps, gates, a_out, valid=torch.tensor([1.0, 0.0]))
    assert out.shape == (2, 71, 224, 224)
    assert out[0].abs().sum() > 0 and not out[1].any()
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        avss.encode_frames(frames, audio, valid=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"valid: expected a bool or float32 tensor \[2\]"):
        avss.encode_frames(frames, audio, valid=torch.ones(3))


def test_fold_inert_dam_is_equal_within_tolerance():
    torch.manual_seed(0)
    dam = DAMFusionBlock(64)
    with torch.no_grad():
        for p in dam.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, audio = torch.randn(2, 64, 8, 8), torch.randn(2, 256, 1)
    for mask in (None, torch.tensor([1.0, 0.0])):
        dam.folded_a2v = None
        with torch.no_grad():
            ref = dam(x, audio, mask)
            dam.fold_inert()
            folded = dam(x, audio, mask)
        torch.testing.assert_close(folded[0], ref[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(folded[1], ref[1], atol=1e-6, rtol=0)
        assert not torch.allclose(ref[0], x)  # the residual is a real (constant) change, not zero


def test_fold_inert_model_matches(model, clip, stages):
    folded = _quiet(FAST, model.state_dict()).fold_inert()
    with torch.inference_mode():
        maps, pooled, audio = folded.encode_frames(*clip)
    for s in range(4):
        torch.testing.assert_close(maps[s], stages[0][s], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(audio, stages[2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(frames=torch.zeros(5, 3, 448, 448)), r"frames: expected shape \[5, 3, 224, 224\].*resize the frames"),
    (dict(frames=torch.zeros(4, 3, 224, 224)), r"takes clips of T=5 frames"),
    (dict(frames=torch.zeros(5, 224, 224)), r"frames: expected \[T, 3, 224, 224\]"),
    (dict(frames=torch.zeros(5, 3, 224, 224, dtype=torch.float64)), r"frames: expected float32, got torch.float64"),
    (dict(audio_embed=torch.zeros(5, 256)), r"audio_embed: expected shape \[5, 128\]"),
    (dict(audio_embed=torch.zeros(4, 128)), r"audio_embed: expected shape \[5, 128\].*got \[4, 128\]"),
    (dict(valid=torch.ones(5)), r"valid: selm-s4-r50 takes no per-frame validity mask"),
    (dict(gumbel_noise=torch.rand(5, 2, 4116)), r"built with gumbel='none', which takes no noise input"),
])
def test_bad_inputs_are_named(model, kwargs, match):
    args = dict(frames=torch.zeros(5, 3, 224, 224), audio_embed=torch.zeros(5, 128))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        model(**args)


@pytest.mark.parametrize("noise, match", [
    (None, r"required with gumbel='input'.*shape \[5, 2, 4116\]"),
    (torch.rand(5, 2, 4000), r"gumbel_noise: expected shape \[5, 2, 4116\]"),
    (torch.zeros(5, 2, 4116), r"strictly between 0 and 1"),
])
def test_bad_gumbel_noise_is_named(model, noise, match):
    taker = _quiet(FAST, model.state_dict(), gumbel="input")
    with pytest.raises(ValueError, match=match):
        taker(torch.zeros(5, 3, 224, 224), torch.zeros(5, 128), gumbel_noise=noise)


def test_bad_stage_inputs_are_named(model, stages):
    maps, pooled, audio, gates, audio_out = stages
    with pytest.raises(ValueError, match=r"pooled: expected \[t, 4, 256\] with 1 <= t <= 5"):
        model.temporal(torch.cat([pooled, pooled]), torch.cat([audio, audio]))
    with pytest.raises(ValueError, match=r"gates: expected shape \[1, 4, 256\]"):
        model.decode_frames([m[-1:] for m in maps], gates, audio_out[-1:])
    with pytest.raises(ValueError, match=r"maps\[3\]: expected shape \[5, 256, 7, 7\]"):
        model.decode_frames([*maps[:3], maps[2]], gates, audio_out)


def test_create_model_contract():
    with pytest.warns(UserWarning, match="random weights: outputs are meaningless"):
        create_model(FAST)
    with pytest.raises(KeyError, match="Did you mean selm-s4-r50"):
        create_model("selm-s4-r5")
    with pytest.raises(ValueError, match="gumbel must be one of none, sample, input"):
        create_model(FAST, gumbel="hard")
    cfg = _quiet(FAST).cfg
    assert (cfg.name, cfg.backbone, cfg.setting, cfg.resolution, cfg.frames, cfg.T, cfg.num_classes) == \
        (FAST, "r50", "s4", 224, 5, 5, 1)


def test_options_reach_the_family_builder_and_unknown_ones_name_the_variant():
    with pytest.raises(TypeError, match=r"selm-test: unknown option\(s\) widht; SelM takes gumbel, "):
        create_model("selm-test", widht=3)
    with pytest.raises(TypeError, match=r"vggish: unknown option\(s\) gumbel"):
        create_model("vggish", gumbel="none")
    with torch.device("meta"):
        assert model_builder("selm-test")(temporal_depth=2).cfg.temporal_depth == 2      # caller kwargs win
    model = _quiet("selm-test", gumbel="sample")
    assert model.gumbel == "sample" and model.pretrained_cfg is pretrained_cfg("selm-test")


@pytest.mark.parametrize("name", list_models("selm-*"))
def test_pretrained_config_agrees_with_the_architecture(name):
    pcfg = pretrained_cfg(name)
    with torch.device("meta"):
        cfg = model_builder(name)().cfg
        encoder = model_builder(pcfg.audio_encoder)()
    assert (cfg.resolution, cfg.frames, cfg.num_classes, cfg.output_size, cfg.setting, cfg.backbone) == \
        (pcfg.input_size, pcfg.frames_per_clip, pcfg.num_classes, pcfg.output_size, pcfg.setting, pcfg.backbone)
    assert encoder.embedding_dim == cfg.audio_dim and pcfg.family == "selm"
    assert len(pcfg.class_names) == len(pcfg.palette) == max(2, pcfg.num_classes)
    assert (pcfg.output_kind == "semantic") == (pcfg.setting == "avss")


def test_avss_config_carries_the_avsbench_classes_and_voc_palette():
    pcfg = pretrained_cfg("selm-avss-pvt")
    assert (pcfg.class_names[0], pcfg.class_names[70], pcfg.activation) == ("background", "woman", "argmax")
    assert pcfg.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0)) and pcfg.palette[70] != pcfg.palette[69]
    assert pretrained_cfg("selm-s4-r50").url.startswith("https://drive.google.com/")


def test_config_errors():
    with pytest.raises(ValueError, match="output_kind must be one of binary, semantic, embedding"):
        PretrainedCfg(name="x", family="selm", output_kind="heatmap")
    with pytest.raises(ValueError, match="2 class names and 2 colours for 3 output channels"):
        PretrainedCfg(name="x", family="selm", num_classes=3)
    with pytest.raises(ValueError, match="'selm-new' has no pretrained config"):
        register_model("selm-new")(lambda: None)


def test_test_variant_is_tiny_and_fast():
    torch.manual_seed(0)
    tiny = _quiet("selm-test")
    cfg = tiny.cfg
    assert sum(p.numel() for p in tiny.parameters()) < 150_000
    with torch.inference_mode():
        out = tiny(*_clip(cfg.frames, cfg.resolution))
    assert out.shape == (5, 1, 64, 64) and torch.isfinite(out).all()


HEAVY = [n for n in list_models("selm-*") if n not in (FAST, "selm-test")]


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_output_shapes_of_the_other_variants(name):
    torch.manual_seed(0)
    m = _quiet(name, gumbel="input")
    cfg = m.cfg
    frames, audio = _clip(cfg.frames, cfg.resolution)
    noise = m.sample_gumbel_noise(cfg.frames, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = m(frames, audio, gumbel_noise=noise)
    assert out.shape == (cfg.frames, cfg.num_classes, 224, 224)
    assert torch.isfinite(out).all()
