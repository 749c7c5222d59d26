"""AVS-Mamba (export/models/avs_mamba.py): registry, state_dict layout against the public code's manifests,
sequence orders, each block against a direction-by-direction reference, the tiny variant's forward and a short
training step."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from export.models import create_model, list_models, model_builder, pretrained_cfg
from export.models import avs_mamba as am
from export.ops.selective_scan import scan_reference

KEYS = Path(__file__).parent / "avs_mamba_keys"
FULL = [f"avs-mamba-{s}-{b}" for s in ("s4", "ms3", "avss") for b in ("r50", "pvt")]


@pytest.fixture(scope="module")
def cfg() -> am.AVSMambaConfig:
    return am.AVSMambaConfig(name="t", backbone="pvt-test", setting="test", audio_backbone="vggish-test", dim=16,
                             d_state=4, norm_groups=8, ffn_hidden=32, head_widths=(16, 8), frames=3)


def _manifest(name: str) -> dict[str, tuple[str, str]]:
    lines = (KEYS / f"{name}.tsv").read_text().splitlines()
    assert lines[0].startswith("# AVS-Mamba state_dict manifest") and "public code" in lines[0]
    return {k: (s, d) for k, s, d in (line.split("\t") for line in lines if not line.startswith("#"))}


def test_registry() -> None:
    assert list_models("avs-mamba-*") == sorted(FULL + ["avs-mamba-test"])
    for name in FULL:
        pcfg = pretrained_cfg(name)
        assert pcfg.family == "avs-mamba" and pcfg.input_size == 224 and pcfg.audio_encoder == "vggish"
        assert (pcfg.frames_per_clip, pcfg.num_classes) == ((10, 71) if "avss" in name else (5, 1))
        with torch.device("meta"):
            cfg = model_builder(name)().cfg
        assert (cfg.resolution, cfg.frames, cfg.num_classes) == (224, pcfg.frames_per_clip, pcfg.num_classes)
    with pytest.raises(TypeError, match="unknown option"):
        model_builder("avs-mamba-test")(gumbel="none")


@pytest.mark.parametrize("name", FULL)
def test_state_dict_matches_public_layout(name: str) -> None:
    with torch.device("meta"):
        model = model_builder(name)()
    got = {k: (str(list(t.shape)), str(t.dtype).removeprefix("torch.")) for k, t in model.state_dict().items()}
    want = _manifest(name)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if v != want[k]} == {}
    assert len(got) == (1521 if name.endswith("pvt") else 961)


@pytest.mark.parametrize("order", ["thw", "twh", "hwt", "wht"])
def test_orders_round_trip(order: str) -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    flat = am._flatten(x, order)
    axes = {"t": 2, "h": 3, "w": 4}
    # the innermost axis of the order varies fastest
    inner = axes[order[-1]]
    step = x.movedim(inner, -1)[0, 0].reshape(-1, x.shape[inner])[0]
    assert torch.equal(flat[0, 0, :x.shape[inner]], step)
    assert torch.equal(am._unflatten(flat, order, 4, 5, 6), x)


def test_directions_reverse_the_whole_multiscale_sequence() -> None:
    xs = [torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 2, 2)]
    seqs = am._directions(xs, ("thw", "hwt"), am._PAIRS)
    whole = torch.cat([am._flatten(x, "hwt") for x in xs], dim=-1)
    assert torch.equal(seqs[:, 2], whole) and torch.equal(seqs[:, 3], whole.flip(-1))
    halves = am._directions(xs, ("thw", "hwt"), am._HALVES)
    assert torch.equal(halves[:, 1], whole) and torch.equal(halves[:, 3], whole.flip(-1))
    for layout, s in ((am._PAIRS, seqs), (am._HALVES, halves)):   # identity "scan": each direction gives x back
        merged = am._merge(s, [x.shape[2:] for x in xs], ("thw", "hwt"), layout)
        for x, m in zip(xs, merged):
            torch.testing.assert_close(m, 4 * x)


# -- each block against a direction-by-direction reference (ungrouped scans on explicit sequences) ------------------

def _ref_scan(block: am._MultiDirectionSSM, k: int, seq: torch.Tensor) -> torch.Tensor:
    """Direction k of ``block`` on one explicit sequence (b, d, L): its own x_proj/dt_proj, an ungrouped scan."""
    d, n, r = block.d_inner, block.d_state, block.dt_rank
    x_dbl = torch.einsum("bdl,cd->bcl", seq, block.x_proj_weight[k])
    dt = torch.einsum("brl,dr->bdl", x_dbl[:, :r], block.dt_projs_weight[k])
    sl = slice(k * d, (k + 1) * d)
    return scan_reference(seq, dt, -torch.exp(block.A_logs[sl]), x_dbl[:, r:r + n].contiguous(),
                          x_dbl[:, r + n:].contiguous(), block.Ds[sl], delta_bias=block.dt_projs_bias[k],
                          delta_softplus=True)


def _hw(x: torch.Tensor) -> torch.Tensor:          # (b, d, h, w) -> row-major sequence
    return x.flatten(2)


def _wh(x: torch.Tensor) -> torch.Tensor:          # column-major
    return x.transpose(2, 3).flatten(2)


@torch.no_grad()
def test_vss_block_against_reference(cfg) -> None:
    torch.manual_seed(0)
    blk = am.VMambaBlock(cfg).eval()
    xs = [torch.randn(2, s, s, cfg.dim) for s in (4, 2, 1)]
    out = blk(xs)
    vs, zs = [], []
    for x in xs:
        v, z = blk.in_proj(x).chunk(2, -1)
        vs.append(F.silu(blk.conv2d(v.permute(0, 3, 1, 2))))
        zs.append(z)
    hw, wh = torch.cat([_hw(v) for v in vs], -1), torch.cat([_wh(v) for v in vs], -1)
    y_hw = _ref_scan(blk, 0, hw) + _ref_scan(blk, 2, hw.flip(-1)).flip(-1)
    y_wh = _ref_scan(blk, 1, wh) + _ref_scan(blk, 3, wh.flip(-1)).flip(-1)
    start = 0
    for v, z, o in zip(vs, zs, out):
        h, w = v.shape[2:]
        y = (y_hw[..., start:start + h * w].reshape(2, -1, h, w)
             + y_wh[..., start:start + h * w].reshape(2, -1, w, h).transpose(2, 3))
        start += h * w
        torch.testing.assert_close(o, blk._gate_out(y.permute(0, 2, 3, 1), z), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_v2a_temporal_level_against_reference(cfg) -> None:
    torch.manual_seed(1)
    blk = am.VisionToAudioFusion(cfg, inter_frame=True).eval()
    t, h, w = cfg.frames, 3, 2
    vis, audio = torch.randn(t, h, w, cfg.dim), torch.randn(t, 1, cfg.dim)
    out = blk(vis, audio, t)
    v = F.silu(blk.conv2d(blk.in_proj_vis(vis).permute(0, 3, 1, 2)))               # (t, d, h, w)
    a, z = blk.in_proj_audio(audio).chunk(2, -1)
    a = F.silu(F.conv1d(a[:, 0].T[None], blk.conv1d.weight, blk.conv1d.bias, padding=3, groups=blk.d_inner)[..., :t])
    thw = v.permute(1, 0, 2, 3).reshape(1, blk.d_inner, -1)
    twh = v.permute(1, 0, 3, 2).reshape(1, blk.d_inner, -1)
    fwd = _ref_scan(blk, 0, torch.cat([thw, a], -1))[..., -t:] + _ref_scan(blk, 1, torch.cat([twh, a], -1))[..., -t:]
    rev = (_ref_scan(blk, 2, torch.cat([thw.flip(-1), a.flip(-1)], -1))[..., -t:]
           + _ref_scan(blk, 3, torch.cat([twh.flip(-1), a.flip(-1)], -1))[..., -t:])
    y = (fwd + rev.flip(-1))[0].T.unsqueeze(1)                                    # (t, 1, d)
    torch.testing.assert_close(out, blk._gate_out(y, z), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_v2a_frame_level_against_reference(cfg) -> None:
    torch.manual_seed(2)
    blk = am.VisionToAudioFusion(cfg, inter_frame=False).eval()
    vis, audio = torch.randn(2, 3, 2, cfg.dim), torch.randn(2, 1, cfg.dim)
    out = blk(vis, audio, 2)
    v = F.silu(blk.conv2d(blk.in_proj_vis(vis).permute(0, 3, 1, 2)))
    a, z = blk.in_proj_audio(audio).chunk(2, -1)
    a = F.silu(a.transpose(1, 2) * blk.conv1d.weight[:, 0, -1, None] + blk.conv1d.bias[:, None])   # L = 1
    seqs = [_hw(v), _wh(v), _hw(v).flip(-1), _wh(v).flip(-1)]
    y = sum(_ref_scan(blk, k, torch.cat([s, a], -1))[..., -1:] for k, s in enumerate(seqs))
    torch.testing.assert_close(out, blk._gate_out(y.transpose(1, 2), z), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a2v_against_reference(cfg) -> None:
    torch.manual_seed(3)
    blk = am.AudioToVisionFusion(cfg).eval()
    t, h, w = cfg.frames, 2, 3
    vis, audio = torch.randn(t, h, w, cfg.dim), torch.randn(1, t, cfg.dim)
    out = blk(vis, audio, t)
    v, z = blk.in_proj_vis(vis).chunk(2, -1)
    v = F.silu(blk.conv2d(v.permute(0, 3, 1, 2)))
    a = blk.in_proj_audio(audio).transpose(1, 2)
    a = F.silu(F.conv1d(a, blk.conv1d.weight, blk.conv1d.bias, padding=3, groups=blk.d_inner)[..., :t])
    thw = v.permute(1, 0, 2, 3).reshape(1, blk.d_inner, -1)
    twh = v.permute(1, 0, 3, 2).reshape(1, blk.d_inner, -1)
    y_thw = _ref_scan(blk, 0, torch.cat([a, thw], -1))[..., t:] + \
        _ref_scan(blk, 2, torch.cat([a.flip(-1), thw.flip(-1)], -1))[..., t:].flip(-1)
    y_twh = _ref_scan(blk, 1, torch.cat([a, twh], -1))[..., t:] + \
        _ref_scan(blk, 3, torch.cat([a.flip(-1), twh.flip(-1)], -1))[..., t:].flip(-1)
    y = y_thw.reshape(-1, t, h, w) + y_twh.reshape(-1, t, w, h).transpose(2, 3)    # (d, t, h, w)
    torch.testing.assert_close(out, blk._gate_out(y.permute(1, 2, 3, 0), z), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_temporal_block_against_reference(cfg) -> None:
    torch.manual_seed(4)
    blk = am.TemporalMambaBlock(cfg).eval()
    t = cfg.frames
    xs = [torch.randn(1, t, 4, 3, cfg.dim), torch.randn(1, t, 2, 1, cfg.dim)]
    out = blk(xs)
    vs, zs = [], []
    for x in xs:
        v, z = blk.in_proj(x).chunk(2, -1)
        v = v.permute(0, 4, 1, 2, 3)
        vs.append(F.silu(F.conv3d(v, blk.conv3d.weight, blk.conv3d.bias, padding=(0, 1, 1), groups=blk.d_inner)))
        zs.append(z)
    perms = {"thw": (2, 3, 4), "twh": (2, 4, 3), "hwt": (3, 4, 2), "wht": (4, 3, 2)}
    ys = [0, 0]
    for i, (order, p) in enumerate(perms.items()):
        seq = torch.cat([v.permute(0, 1, *p).flatten(2) for v in vs], -1)
        y = _ref_scan(blk, 2 * i, seq) + _ref_scan(blk, 2 * i + 1, seq.flip(-1)).flip(-1)
        start = 0
        for s, v in enumerate(vs):
            shape = [v.shape[a] for a in p]
            part = y[..., start:start + v[0, 0].numel()].reshape(1, -1, *shape)
            start += v[0, 0].numel()
            ys[s] = ys[s] + part.permute(0, 1, *[p.index(a) + 2 for a in (2, 3, 4)])
    for o, y, z in zip(out, ys, zs):
        torch.testing.assert_close(o, blk._gate_out(y.permute(0, 2, 3, 4, 1), z), rtol=1e-4, atol=1e-5)


# -- whole model ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_cip_res2_reuses_res3_temporal_mamba(cfg) -> None:
    torch.manual_seed(5)
    fpn = am.CrossModalFPN(cfg).eval()
    t = cfg.frames
    memory = [torch.randn(t, cfg.dim, s, s) for s in (4, 2, 1)]
    res2, audio = torch.randn(t, cfg.dim, 8, 8), torch.randn(1, t, cfg.dim)
    base = fpn(audio, memory, t, res2)
    assert base.shape == (t, cfg.dim, 8, 8)
    fpn.self_attns[3].mamba_block.out_proj.weight.add_(1.0)          # instantiated, never run
    torch.testing.assert_close(fpn(audio, memory, t, res2), base)
    fpn.self_attns[2].mamba_block.out_proj.weight.add_(1.0)          # res3's, also run at res2
    assert not torch.allclose(fpn(audio, memory, t, res2), base)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights"):
        return create_model("avs-mamba-test")


@torch.no_grad()
def test_tiny_forward(tiny) -> None:
    torch.manual_seed(1)
    frames, log_mel = torch.randn(5, 3, 64, 64), torch.randn(5, 1, 96, 64)
    logits = tiny(frames, log_mel)
    assert logits.shape == (5, 1, 64, 64) and torch.isfinite(logits).all()
    audio, maps = tiny.encode_frames(frames, log_mel)
    assert audio.shape == (5, 16) and [tuple(m.shape[1:]) for m in maps] == [(16, s, s) for s in (16, 8, 4, 2)]
    both = tiny.fuse(audio, maps, aux=True)
    assert len(both) == 2 and torch.equal(both[-1], logits)
    mask_features, hs = tiny.fuse_features(audio, maps)                # the streaming split: window, then newest
    assert mask_features.shape == (5, 16, 16, 16) and [tuple(q.shape) for q in hs] == [(5, 1, 16)] * 2
    torch.testing.assert_close(tiny.decode(mask_features[4:], hs[-1][4:]), logits[4:], rtol=1e-5, atol=1e-6)
    later = log_mel.clone()
    later[4] += 1.0                                                    # non-causal in time: frame 0 sees frame 4
    assert not torch.allclose(tiny(frames, later)[0], logits[0])
    with pytest.raises(ValueError, match="log_mel"):
        tiny(frames, log_mel[:4])
    with pytest.raises(ValueError, match="frames"):
        tiny(frames[:4], log_mel[:4])


@torch.no_grad()
def test_avss_validity_zeroes_padded_frames() -> None:
    torch.manual_seed(0)
    frames, log_mel = torch.randn(5, 3, 32, 32), torch.randn(5, 1, 96, 64)
    valid = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    with pytest.raises(ValueError, match="only the AVSS"):
        model_builder("avs-mamba-test")()(frames, log_mel, valid=valid)
    test_cfg = model_builder("avs-mamba-test")().cfg
    model = am.AVSMamba(replace(test_cfg, setting="avss", num_classes=3)).eval()
    out = model(frames, log_mel, valid=valid)
    assert out.shape == (5, 3, 32, 32) and out[3:].abs().max() == 0 and out[:3].abs().max() > 0
    moved = frames.clone()
    moved[3:] = torch.randn(2, 3, 32, 32)                                 # padded frames' pixels are not seen
    torch.testing.assert_close(model(moved, log_mel, valid=valid), out)


def test_checkpoint_filter_drops_training_only_heads() -> None:
    sd = {"module.fc.4.weight": torch.zeros(1), "query_embed.weight": torch.zeros(1),
          "audio_feature_projection.layers.0.weight": torch.zeros(1), "audio_recons_proj.layers.2.bias": torch.zeros(1),
          "audio_proj.weight": torch.zeros(1)}
    assert sorted(am.checkpoint_filter_fn(sd)) == ["audio_proj.weight", "fc.4.weight"]


@pytest.mark.slow   # the default suite trains through the Trainer (tests/test_train_avs_mamba.py)
def test_tiny_training_step_lowers_loss() -> None:
    torch.manual_seed(0)
    model = model_builder("avs-mamba-test")(drop_path=0.0).train()
    frames, log_mel = torch.randn(5, 3, 32, 32), torch.randn(5, 1, 96, 64)
    target = torch.zeros(5, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1.0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.audio_backbone.parameters())
    opt = torch.optim.Adam(trainable, lr=3e-3)
    losses = []
    for _ in range(3):
        loss = sum(F.binary_cross_entropy_with_logits(o, target) for o in model(frames, log_mel, aux=True))
        opt.zero_grad()
        loss.backward()
        assert model.mamba_encoder[0].temporal_mamba.A_logs.grad is not None
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_tiny_full_graph_exports_with_plugin_scan(tmp_path, tiny) -> None:
    """The clip graph (VGGish inside) exports with 24 SelectiveScan nodes and ONNX Runtime matches PyTorch."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    import plugins
    from export.onnx_export import GraphDef, export_graph, run_torch

    class Clip(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, frames: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
            return self.model(frames, log_mel)

    rng = np.random.default_rng(0)
    feeds = {"frames": rng.standard_normal((5, 3, 64, 64), dtype=np.float32),
             "log_mel": rng.uniform(-4.6, 3.0, size=(5, 1, 96, 64)).astype(np.float32)}
    gdef = GraphDef("full", Clip(tiny), ("frames", "log_mel"), ("logits",))
    path = export_graph(gdef, feeds, tmp_path, 18, "plugin", {"avs.model": "avs-mamba-test"})
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    assert sum(n.op_type == "SelectiveScan" for n in nodes) == 24
    options = ort.SessionOptions()
    options.register_custom_ops_library(plugins.ort_library_path())
    got = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, run_torch(gdef, feeds)["logits"], rtol=1e-4, atol=1e-5)
