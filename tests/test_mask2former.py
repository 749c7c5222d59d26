"""COMBO's Mask2Former parts (export/models/mask2former.py): deformable sampling against a per-point loop written from
the CUDA op's rules, the functional attention-mask edit, module shapes and wiring, ONNX export and ONNX Runtime."""
from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.models.mask2former import (MSDeformAttn, MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder,
                                       ms_deform_attn_core, release_blocked_rows, sine_position_embedding)

SHAPES = [(2, 3), (3, 2), (4, 5)]                  # deliberately non-square, coarse to fine
STARTS = [0, 6, 12]
TOKENS = 32
CHANNELS = {"res2": 16, "res3": 24, "res4": 40, "res5": 48}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


# ----------------------------------------------------------------------------------------------------------------
# Reference: the CUDA kernel's sampling rule, one point at a time
# ----------------------------------------------------------------------------------------------------------------

def _sample_point(level: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear read of level [H, W, D] at normalised (x, y): pixel coords (x*W - 0.5, y*H - 0.5); a point with
    h <= -1, w <= -1, h >= H or w >= W reads zero, and so does each missing corner of a point near the border."""
    height, width, depth = level.shape
    h, w = y * height - 0.5, x * width - 0.5
    if not (h > -1 and w > -1 and h < height and w < width):
        return np.zeros(depth)
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    out = np.zeros(depth)
    for hi, wi, weight in ((h0, w0, (1 - lh) * (1 - lw)), (h0, w0 + 1, (1 - lh) * lw),
                           (h0 + 1, w0, lh * (1 - lw)), (h0 + 1, w0 + 1, lh * lw)):
        if 0 <= hi < height and 0 <= wi < width:
            out += weight * level[hi, wi]
    return out


def _loop_core(value: np.ndarray, shapes, locations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """value [N,S,M,D], locations [N,Lq,M,L,P,2], weights [N,Lq,M,L,P] -> [N,Lq,M*D], in float64."""
    n, _, heads, depth = value.shape
    _, lq, _, levels, points, _ = locations.shape
    out = np.zeros((n, lq, heads, depth))
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        maps = value[:, start:start + h * w].reshape(n, h, w, heads, depth)
        start += h * w
        for b in range(n):
            for q in range(lq):
                for m in range(heads):
                    for p in range(points):
                        x, y = locations[b, q, m, lvl, p]
                        out[b, q, m] += weights[b, q, m, lvl, p] * _sample_point(maps[b, :, :, m], x, y)
    return out.reshape(n, lq, heads * depth)


def _edge_locations(rng: np.random.Generator, n: int, lq: int, heads: int, points: int) -> np.ndarray:
    """Random (x, y) per level, with a third replaced by border and far-out-of-bounds values."""
    loc = rng.uniform(-0.3, 1.3, size=(n, lq, heads, len(SHAPES), points, 2))
    for lvl, (h, w) in enumerate(SHAPES):
        for axis, size in ((0, w), (1, h)):          # +-0.5/size: pixel coordinate exactly -1 or size (excluded)
            specials = np.array([-5.0, -1.0, -0.5, 0.0, 0.5, size - 0.5, size, size + 0.5, size + 1.0, 40.0]) / size
            view = loc[..., lvl, :, axis]
            pick = rng.random(view.shape) < 0.35
            loc[..., lvl, :, axis] = np.where(pick, rng.choice(specials, size=view.shape), view)
    return loc


def test_grid_sample_core_equals_cuda_sampling_rule_in_fp64():
    rng = np.random.default_rng(0)
    n, lq, heads, depth, points = 2, 5, 2, 3, 3
    value = rng.standard_normal((n, TOKENS, heads, depth))
    loc = _edge_locations(rng, n, lq, heads, points)
    weights = rng.uniform(0.1, 1.0, size=(n, lq, heads, len(SHAPES), points))
    got = ms_deform_attn_core(torch.from_numpy(value), SHAPES, torch.from_numpy(loc), torch.from_numpy(weights))
    want = _loop_core(value, SHAPES, loc, weights)
    assert got.dtype == torch.float64 and got.shape == (n, lq, heads * depth)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    outside = (loc < -0.5).any(-1) | (loc > 1.5).any(-1)
    assert outside.any() and (~outside).any()      # the case really mixes far-out and in-range points


def test_msdeformattn_module_with_padding_mask_equals_loop_reference():
    torch.manual_seed(1)
    d, heads, points = 8, 2, 2
    attn = MSDeformAttn(d, len(SHAPES), heads, points).double()
    with torch.no_grad():                          # offsets large enough to leave the maps, weights not uniform
        attn.sampling_offsets.weight.normal_(0, 2.0)
        attn.attention_weights.weight.normal_(0, 1.0)
    n, lq = 2, 4
    query = torch.randn(n, lq, d, dtype=torch.float64)
    ref = torch.rand(n, lq, len(SHAPES), 2, dtype=torch.float64)
    value_input = torch.randn(n, TOKENS, d, dtype=torch.float64)
    padding = torch.rand(n, TOKENS) < 0.3
    with torch.no_grad():
        got = attn(query, ref, value_input, SHAPES, STARTS, padding).numpy()
        value = attn.value_proj(value_input).masked_fill(padding[..., None], 0.0).view(n, TOKENS, heads, -1)
        offsets = attn.sampling_offsets(query).view(n, lq, heads, len(SHAPES), points, 2)
        weights = attn.attention_weights(query).view(n, lq, heads, -1).softmax(-1).view(n, lq, heads, len(SHAPES),
                                                                                         points)
        sizes = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64)
        loc = ref[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
        sampled = _loop_core(value.numpy(), SHAPES, loc.numpy(), weights.numpy())
        want = attn.output_proj(torch.from_numpy(sampled)).numpy()
        unpadded = attn(query, ref, value_input, SHAPES, STARTS).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.abs(got - unpadded).max() > 1e-3     # the mask really removed values


def test_msdeformattn_default_init_and_argument_checks():
    attn = MSDeformAttn()
    assert [k for k in attn.state_dict()] == [f"{m}.{p}" for m in ("sampling_offsets", "attention_weights",
                                                                   "value_proj", "output_proj")
                                              for p in ("weight", "bias")]
    ring = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    assert torch.equal(ring[:, 0], ring[:, 2]) and torch.allclose(ring[0, 0, :, 0], torch.tensor([1., 2., 3., 4.]))
    assert ring[:, :, 0].abs().amax(-1).eq(1).all()      # each head's first point lies on the unit square
    q = torch.zeros(1, 2, 256)
    with pytest.raises(ValueError, match="level_start"):
        attn(q, torch.zeros(1, 2, 3, 2), torch.zeros(1, TOKENS, 256), SHAPES, [0, 6, 13])
    with pytest.raises(ValueError, match="tokens"):
        attn(q, torch.zeros(1, 2, 3, 2), torch.zeros(1, TOKENS + 1, 256), SHAPES, STARTS)


# ----------------------------------------------------------------------------------------------------------------
# Attention-mask edit and positions
# ----------------------------------------------------------------------------------------------------------------

def test_release_blocked_rows_equals_inplace_original():
    torch.manual_seed(2)
    mask = torch.rand(12, 10, 7) < 0.7
    mask[0, 3] = True
    mask[5, :4] = True
    expected = mask.clone()
    expected[torch.where(expected.sum(-1) == expected.shape[-1])] = False
    got = release_blocked_rows(mask)
    assert torch.equal(got, expected)
    assert mask.all(-1).sum() >= 5 and not got.all(-1).any()   # rows were released; the input is untouched
    assert torch.equal(got[~mask.all(-1)], mask[~mask.all(-1)])


def test_sine_position_embedding_matches_detr_formula():
    pos = sine_position_embedding(3, 5, 4)
    assert pos.shape == (1, 8, 3, 5)
    y, x = 2, 4                                    # pixel (row 2, col 4): normalised coords (3/3, 5/5) * 2*pi
    ay, ax = 3 / (3 + 1e-6) * 2 * math.pi, 5 / (5 + 1e-6) * 2 * math.pi
    dims = [10000 ** (2 * (i // 2) / 4) for i in range(4)]
    want_y = [math.sin(ay / dims[0]), math.cos(ay / dims[1]), math.sin(ay / dims[2]), math.cos(ay / dims[3])]
    want_x = [math.sin(ax / dims[0]), math.cos(ax / dims[1]), math.sin(ax / dims[2]), math.cos(ax / dims[3])]
    np.testing.assert_allclose(pos[0, :, y, x].numpy(), want_y + want_x, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Pixel decoder and transformer decoder
# ----------------------------------------------------------------------------------------------------------------

def _pixel_decoder(**kw) -> MSDeformAttnPixelDecoder:
    args = dict(conv_dim=64, mask_dim=32, enc_layers=2, nheads=4, n_points=2, dim_feedforward=128)
    return MSDeformAttnPixelDecoder(CHANNELS, **{**args, **kw}).eval()


def _features(n: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, c, size // STRIDES[k], size // STRIDES[k], generator=g) for k, c in CHANNELS.items()}


def _decoder(**kw) -> MultiScaleMaskedTransformerDecoder:
    args = dict(in_channels=64, hidden_dim=64, num_queries=10, nheads=4, dim_feedforward=128, dec_layers=4,
                mask_dim=32)
    return MultiScaleMaskedTransformerDecoder(2, **{**args, **kw}).eval()


def test_pixel_decoder_shapes_order_and_res2_only_in_fpn():
    torch.manual_seed(3)
    pd = _pixel_decoder()
    feats = _features()
    with torch.no_grad():
        mask_features, multi = pd(feats)
        changed = dict(feats, res2=feats["res2"] + 1.0)
        mask_features2, multi2 = pd(changed)
        multi3 = pd(dict(feats, res5=feats["res5"] * 2.0))[1]
    assert mask_features.shape == (2, 32, 16, 16)
    assert [tuple(m.shape) for m in multi] == [(2, 64, 2, 2), (2, 64, 4, 4), (2, 64, 8, 8)]   # res5, res4, res3
    assert all(torch.equal(a, b) for a, b in zip(multi, multi2))       # res2 feeds only the FPN level
    assert not torch.allclose(mask_features, mask_features2)
    assert all(not torch.allclose(a, b) for a, b in zip(multi, multi3))  # the encoder mixes all levels


def test_pixel_decoder_refuses_bad_config():
    with pytest.raises(ValueError, match="res2"):
        MSDeformAttnPixelDecoder({"res3": 8, "res4": 8, "res5": 8})
    with pytest.raises(ValueError, match="gn_groups"):
        MSDeformAttnPixelDecoder(CHANNELS, conv_dim=48)


def test_transformer_decoder_shapes_and_aux_outputs():
    torch.manual_seed(4)
    pd, dec = _pixel_decoder(), _decoder()
    with torch.no_grad():
        mask_features, multi = pd(_features())
        audio = torch.randn(2, 64)
        lean = dec(multi, audio, mask_features)
        full = dec(multi, audio, mask_features, aux=True)
    assert set(lean) == {"pred_logits", "pred_masks"}
    assert lean["pred_logits"].shape == (2, 10, 3) and lean["pred_masks"].shape == (2, 10, 16, 16)
    assert torch.equal(lean["pred_logits"], full["pred_logits"]) and torch.equal(lean["pred_masks"],
                                                                                 full["pred_masks"])
    aux = full["aux_outputs"]
    assert len(aux) == 4 and all(a["pred_masks"].shape == (2, 10, 16, 16) for a in aux)
    assert not torch.allclose(aux[-1]["pred_masks"], full["pred_masks"])


def test_audio_queries_layouts():
    dec_official, dec_sample = _decoder(), _decoder(audio_layout="per_sample")
    n, q, c = 3, 10, 64
    audio = torch.randn(n, c)
    official = dec_official._audio_queries(audio)
    assert torch.equal(official, audio[:, None].repeat(1, q, 1).reshape(q, n, c))   # COMBO's, on its [N, 1, C]
    rows = torch.tensor([[(qi * n + b) // q for b in range(n)] for qi in range(q)])
    assert torch.equal(official, audio[rows])
    assert torch.equal(dec_sample._audio_queries(audio), audio[None].expand(q, n, c))
    assert torch.equal(dec_official._audio_queries(audio[:1]), dec_sample._audio_queries(audio[:1]))
    with pytest.raises(ValueError, match="audio_layout"):
        _decoder(audio_layout="dim")


def test_audio_enters_the_queries_and_fully_blocked_rows_attend_everywhere():
    torch.manual_seed(5)
    dec = _decoder()
    multi = [torch.randn(1, 64, s, s) for s in (2, 4, 8)]
    mask_features = torch.rand(1, 32, 16, 16) + 0.1                  # positive: the masks take the bias's sign
    with torch.no_grad():
        a = dec(multi, torch.zeros(1, 64), mask_features)
        b = dec(multi, torch.ones(1, 64), mask_features)
        last = dec.mask_embed.layers[-1]
        last.weight.zero_()
        outs = {}
        for bias in (-10.0, 10.0):                                   # every pixel blocked / none blocked
            last.bias.fill_(bias)
            outs[bias] = dec(multi, torch.ones(1, 64), mask_features, aux=True)
    assert not torch.allclose(a["pred_logits"], b["pred_logits"])
    assert (outs[-10.0]["pred_masks"] < 0).all() and (outs[10.0]["pred_masks"] > 0).all()
    for got, want in zip(outs[-10.0]["aux_outputs"][1:] + [outs[-10.0]], outs[10.0]["aux_outputs"][1:] + [outs[10.0]]):
        torch.testing.assert_close(got["pred_logits"], want["pred_logits"])   # released rows = no mask at all


# ----------------------------------------------------------------------------------------------------------------
# ONNX export (torch.onnx dynamo, opset 18 as export/onnx_export.py) and ONNX Runtime
# ----------------------------------------------------------------------------------------------------------------

class _AttnGraph(torch.nn.Module):
    """MSDeformAttn on static level shapes; its offsets are large enough to leave the maps."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MSDeformAttn(32, len(SHAPES), 4, 2)
        with torch.no_grad():
            self.attn.sampling_offsets.weight.normal_(0, 1.0)
            self.attn.attention_weights.weight.normal_(0, 0.5)

    def forward(self, query, reference_points, value):
        return self.attn(query, reference_points, value, SHAPES, STARTS)


class _PixelDecoderGraph(torch.nn.Module):
    def __init__(self, pd: MSDeformAttnPixelDecoder) -> None:
        super().__init__()
        self.pd = pd

    def forward(self, res2, res3, res4, res5):
        mask_features, multi = self.pd({"res2": res2, "res3": res3, "res4": res4, "res5": res5})
        return (mask_features, *multi)


def export_and_run(module: torch.nn.Module, feeds: dict[str, np.ndarray], path) -> tuple[onnx.ModelProto, list, list]:
    """Export like ``export.onnx_export.export_graph`` (dynamo, opset 18, full check); (model, ORT outs, torch outs)."""
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=18, input_names=list(feeds))
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(*args)
    want = [t.numpy() for t in (want if isinstance(want, tuple) else (want,))]
    return onnx.load(str(path)), session.run(None, feeds), want


def export_attn_graph(path, seed: int = 6) -> tuple[onnx.ModelProto, list, list]:
    """A small MSDeformAttn (3 levels, reference points partly outside the maps) exported to ``path`` and run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feeds = {"query": rng.standard_normal((2, 7, 32), dtype=np.float32),
             "reference_points": rng.uniform(-0.2, 1.2, size=(2, 7, len(SHAPES), 2)).astype(np.float32),
             "value": rng.standard_normal((2, TOKENS, 32), dtype=np.float32)}
    return export_and_run(_AttnGraph().eval(), feeds, path)


def test_msdeformattn_exports_to_stock_grid_sample_and_matches_onnxruntime(tmp_path):
    model, got, want = export_attn_graph(tmp_path / "attn.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GridSample") == len(SHAPES) and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    for node in (n for n in model.graph.node if n.op_type == "GridSample"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("align_corners", 0) == 0 and attrs.get("padding_mode", b"zeros") == b"zeros"
        assert attrs.get("mode", b"bilinear") in (b"bilinear", b"linear")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


def test_small_pixel_decoder_exports_with_folded_positions_and_matches_onnxruntime(tmp_path):
    torch.manual_seed(7)
    feats = {k: v[:1].numpy() for k, v in _features().items()}
    model, got, want = export_and_run(_PixelDecoderGraph(_pixel_decoder()).eval(), feats, tmp_path / "pd.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert "GridSample" in ops and not ops & {"Sin", "Cos", "CumSum", "Range"}   # positions are constants
    assert [tuple(o.shape) for o in got] == [(1, 32, 16, 16), (1, 64, 2, 2), (1, 64, 4, 4), (1, 64, 8, 8)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
