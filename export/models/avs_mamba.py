"""AVS-Mamba: temporal and multi-modal Mamba for audio-visual segmentation, S4 / MS3 / AVSS x ResNet-50 / PVT-v2-b5.

Paper: S. Gong, Y. Zhuge, L. Zhang, Y. Wang, P. Zhang, L. Wang, H. Lu, "AVS-Mamba: Exploring Temporal and
Multi-modal Mamba for Audio-Visual Segmentation", IEEE TMM 27, 2025 (arXiv:2501.07810). Public code:
https://github.com/SitongGong/AVS-Mamba, model files only in its history (commits 91c4fc3, 17ec483; no LICENSE,
no released weights). Written from ``shared/specs/avs-mamba.md``; module and parameter names follow the public
code (``audio_backbone``, ``vision_backbone``, ``mamba_encoder``, ``mamba_decoder``, ``cmfpn``, ``mlp``, ``fc``)
so that a future official checkpoint loads strictly. Nothing is copied.

Data path (B clips of T frames, flattened to B*T)::

    encode_frames (per frame):  VGGish -> audio_proj [BT,256]; backbone -> input_proj (1x1 + GN) -> res2..res5
    fuse_features (the window): MTE (2 layers: VSS joint scan over res3|res4|res5, MixFFN, Temporal Mamba K=8
                                over T x scales); MAD (2 layers x 3 scales x {frame-level, temporal-level} V2A:
                                only the audio query changes); CIP (top-down FPN res5->res2: adapter, Mamba3D K=8,
                                A2V K=4, nearest up, 3x3 conv + ReLU) -> mask features [BT,256,R/4,R/4], queries
    decode (per frame):         einsum(mask features, query) -> FFN + residual -> fc -> logits at the input size

Every scan is one ``avs::selective_scan`` call with grouped B/C (G = the number of directions K); the directions
are explicit flips/permutes of the sequence. Choices the spec leaves open are fixed in ``AVSMambaConfig`` and
listed in its docstring. The model is non-causal in time (every temporal scan runs both ways), so a live stream
recomputes ``fuse_features`` on a sliding window of cached ``encode_frames`` outputs and decodes the newest frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ._pretrained import AVSBENCH_CLASSES, PretrainedCfg, voc_palette
from ._registry import (model_builder, pretrained_cfg, register_model, register_pretrained_cfgs,
                        variant_config)
from .pvt_v2 import B5_WIDTHS, TEST_WIDTHS, pvt_v2_b5, pvt_v2_test
from .resnet import B2ResNet
from export.ops.selective_scan import selective_scan

__all__ = ["AVSMamba", "AVSMambaConfig", "VMambaBlock", "TemporalMambaBlock", "Mamba3D", "VisionToAudioFusion",
           "AudioToVisionFusion", "CrossModalFPN", "checkpoint_filter_fn", "default_cfgs"]

_BACKBONES = {"r50": (B2ResNet, B2ResNet.stage_channels), "pvt": (pvt_v2_b5, B5_WIDTHS),
              "pvt-test": (pvt_v2_test, TEST_WIDTHS)}
_HALVES, _PAIRS = "halves", "pairs"   # direction layouts: (f0, f1, .., r0, r1, ..) or (f0, r0, f1, r1, ..)


# ----------------------------------------------------------------------------------------------------------------
# Sequence orders
# ----------------------------------------------------------------------------------------------------------------

_ORDER_PERMS = {"thw": (0, 1, 2, 3, 4), "twh": (0, 1, 2, 4, 3), "hwt": (0, 1, 3, 4, 2), "wht": (0, 1, 4, 3, 2)}


def _flatten(x: Tensor, order: str) -> Tensor:
    """(b, c, t, h, w) -> (b, c, t*h*w) in axis order ``order`` (outer to inner)."""
    return x.permute(_ORDER_PERMS[order]).reshape(x.shape[0], x.shape[1], -1)


def _unflatten(y: Tensor, order: str, t: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`_flatten`: (b, c, t*h*w) in ``order`` -> (b, c, t, h, w)."""
    sizes = dict(t=t, h=h, w=w)
    y = y.reshape(y.shape[0], y.shape[1], *(sizes[a] for a in order))
    return y.permute(0, 1, *(order.index(a) + 2 for a in "thw"))


def _directions(xs: Sequence[Tensor], orders: Sequence[str], layout: str) -> Tensor:
    """Scales ``xs`` (b, c, t, h_i, w_i) serialised per order and concatenated (scale 0 first), plus each sequence
    reversed as a whole: (b, 2 * len(orders), c, L)."""
    fwd = [torch.cat([_flatten(x, o) for x in xs], dim=-1) for o in orders]
    rev = [torch.flip(s, dims=[-1]) for s in fwd]
    seqs = fwd + rev if layout == _HALVES else [s for pair in zip(fwd, rev) for s in pair]
    return torch.stack(seqs, dim=1)


def _merge(y: Tensor, shapes: Sequence[tuple[int, int, int]], orders: Sequence[str], layout: str) -> list[Tensor]:
    """Inverse of :func:`_directions` summed over directions: (b, K, c, L) -> per scale (b, c, t, h, w)."""
    n = len(orders)
    sizes = [t * h * w for t, h, w in shapes]
    out: list[Optional[Tensor]] = [None] * len(shapes)
    for i, order in enumerate(orders):
        f, r = (y[:, i], y[:, n + i]) if layout == _HALVES else (y[:, 2 * i], y[:, 2 * i + 1])
        seq = f + torch.flip(r, dims=[-1])
        for s, (part, (t, h, w)) in enumerate(zip(torch.split(seq, sizes, dim=-1), shapes)):
            v = _unflatten(part, order, t, h, w)
            out[s] = v if out[s] is None else out[s] + v
    return out


def _causal_conv1d(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """``causal_conv1d_fn(..., activation="silu")`` as a grouped Conv1d with left zero padding: (b, d, L) -> same."""
    k = conv.weight.shape[-1]
    return F.silu(F.conv1d(F.pad(x, (k - 1, 0)), conv.weight, conv.bias, groups=conv.groups))


def _dwconv_frames(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """The (1, k, k) depth-wise Conv3d on (b, d, t, h, w), run as a Conv2d over the b*t frames (same math)."""
    b, d, t, h, w = x.shape
    y = x.transpose(1, 2).reshape(b * t, d, h, w)
    y = F.conv2d(y, conv.weight[:, :, 0], conv.bias, padding=conv.padding[1:], groups=conv.groups)
    return y.reshape(b, t, d, h, w).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


# ----------------------------------------------------------------------------------------------------------------
# The K-direction selective scan shared by every block
# ----------------------------------------------------------------------------------------------------------------

class _MultiDirectionSSM(nn.Module):
    """K stacked S6 parameter sets over one (b, K, d_inner, L) input, scanned in one grouped call.

    Parameters (public names): ``x_proj_weight`` (K, R+2N, d), ``dt_projs_weight`` (K, d, R), ``dt_projs_bias``
    (K, d), ``A_logs`` (K*d, N), ``Ds`` (K*d); ``out_norm`` LayerNorm(d) and ``out_proj`` are the subclasses'.
    """

    def _init_ssm(self, cfg: "AVSMambaConfig", k: int) -> None:
        d, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank_
        self.d_inner, self.d_state, self.dt_rank, self.K = d, n, r, k
        bound = 1.0 / math.sqrt(d)   # nn.Linear's default init, which the stacked x_proj weights keep
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d).uniform_(-bound, bound))
        std = r ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-std, std))
        dt = torch.exp(torch.rand(k, d) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))

    def _scan(self, xs: Tensor) -> Tensor:
        """(b, K, d, L) -> (b, K, d, L) fp32: per-direction projections (batched MatMul), one scan with G = K."""
        b, k, d, length = xs.shape
        x_dbl = torch.matmul(self.x_proj_weight, xs)                            # (b, K, R+2N, L)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)                           # (b, K, d, L)
        y = selective_scan(xs.float().reshape(b, k * d, length).contiguous(),
                           dts.float().reshape(b, k * d, length).contiguous(),
                           -torch.exp(self.A_logs.float()), bs.float().contiguous(), cs.float().contiguous(),
                           self.Ds.float(), delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True)
        return y.reshape(b, k, d, length)

    def _gate_out(self, y: Tensor, z: Tensor) -> Tensor:
        """Channels-last y: out_proj(out_norm(y) * SiLU(z))."""
        return self.out_proj(self.out_norm(y) * F.silu(z))


# ----------------------------------------------------------------------------------------------------------------
# MTE: Multi-scale Temporal Encoder
# ----------------------------------------------------------------------------------------------------------------

class VMambaBlock(_MultiDirectionSSM):
    """VSS block: one joint K=4 scan per frame over res3|res4|res5 (HW, WH, both reversed), weights shared."""

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        d = cfg.d_inner
        self.in_proj = nn.Linear(cfg.dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, cfg.d_conv, padding=(cfg.d_conv - 1) // 2, groups=d)
        self._init_ssm(cfg, 4)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, cfg.dim, bias=False)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """Scales (bt, h_i, w_i, dim) -> same shapes."""
        zs, vs = [], []
        for x in xs:
            v, z = self.in_proj(x).chunk(2, dim=-1)
            zs.append(z)
            vs.append(F.silu(self.conv2d(v.permute(0, 3, 1, 2))).unsqueeze(2))      # (bt, d, 1, h, w)
        y = self._scan(_directions(vs, ("thw", "twh"), _HALVES))
        ys = _merge(y, [v.shape[2:] for v in vs], ("thw", "twh"), _HALVES)
        return [self._gate_out(v[:, :, 0].permute(0, 2, 3, 1), z) for v, z in zip(ys, zs)]


class TemporalMambaBlock(_MultiDirectionSSM):
    """3D selective scan over T and the given scales jointly: K=8 (THW, TWH, HWT, WHT, each also reversed).

    With one scale this is the CIP's ``Mamba3D``; with res3..res5 the MTE's Temporal Mamba.
    """

    ORDERS = ("thw", "twh", "hwt", "wht")

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        d = cfg.d_inner
        self.in_proj = nn.Linear(cfg.dim, 2 * d, bias=False)
        pad = (cfg.d_conv - 1) // 2
        self.conv3d = nn.Conv3d(d, d, (1, cfg.d_conv, cfg.d_conv), padding=(0, pad, pad), groups=d)
        self._init_ssm(cfg, 8)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, cfg.dim, bias=False)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """Scales (b, t, h_i, w_i, dim) -> same shapes."""
        zs, vs = [], []
        for x in xs:
            v, z = self.in_proj(x).chunk(2, dim=-1)
            zs.append(z)
            vs.append(F.silu(_dwconv_frames(v.permute(0, 4, 1, 2, 3), self.conv3d)))  # (b, d, t, h, w)
        y = self._scan(_directions(vs, self.ORDERS, _PAIRS))
        ys = _merge(y, [v.shape[2:] for v in vs], self.ORDERS, _PAIRS)
        return [self._gate_out(v.permute(0, 2, 3, 4, 1), z) for v, z in zip(ys, zs)]


class Mamba3D(TemporalMambaBlock):
    """The CIP's Temporal Mamba: :class:`TemporalMambaBlock` on one scale, (b, t, h, w, dim) -> same."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward([x])[0]


class MixFFN(nn.Module):
    """fc1 -> depth-wise 3x3 -> GELU -> fc2 on (bt, h, w, c); ``norm`` exists in the public code but is unused."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.norm = nn.LayerNorm(dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.dwconv.weight, 0.0, math.sqrt(2.0 / 9))
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))


class MultiscaleTemporalEncoderLayer(nn.Module):
    """One MTE layer: VSS (shared over scales) + MixFFN per frame, then Temporal Mamba over the clip."""

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        eps = cfg.block_norm_eps
        self.ln_l = nn.LayerNorm(cfg.dim, eps=eps)
        self.drop_path = DropPath(cfg.drop_path)
        self.mamba_block = VMambaBlock(cfg)
        self.mixffn = MixFFN(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=eps)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=eps)
        self.temporal_mamba = TemporalMambaBlock(cfg)

    def forward(self, xs: Sequence[Tensor], t: int) -> list[Tensor]:
        """Scales (b*t, h_i, w_i, dim) -> same shapes."""
        ys = self.mamba_block([self.ln_l(x) for x in xs])
        xs = [x + self.drop_path(y) for x, y in zip(xs, ys)]
        xs = [x + self.drop_path(self.mixffn(self.norm2(x))) for x in xs]
        clips = [x.reshape(-1, t, *x.shape[1:]) for x in xs]
        ys = self.temporal_mamba([self.norm3(c) for c in clips])
        return [(c + self.drop_path(y)).flatten(0, 1) for c, y in zip(clips, ys)]


# ----------------------------------------------------------------------------------------------------------------
# MAD and CIP: cross-modal scans
# ----------------------------------------------------------------------------------------------------------------

class VisionToAudioFusion(_MultiDirectionSSM):
    """V2A selective scan (K=4): visual tokens then audio token(s); the outputs at the audio positions update the
    audio query. ``inter_frame=False``: per frame, one audio token appended; ``True``: per clip, T audio tokens
    appended (the reversed directions reverse the visual sequence and the audio order)."""

    def __init__(self, cfg: "AVSMambaConfig", inter_frame: bool) -> None:
        super().__init__()
        d = cfg.d_inner
        self.inter_frame = inter_frame
        self.in_proj_vis = nn.Linear(cfg.dim, d, bias=False)
        self.conv2d = nn.Conv2d(d, d, cfg.d_conv, padding=(cfg.d_conv - 1) // 2, groups=d)
        self.in_proj_audio = nn.Linear(cfg.dim, 2 * d, bias=False)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv_1d, groups=d, padding=cfg.d_conv_1d - 1)
        self._init_ssm(cfg, 4)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, cfg.dim, bias=False)

    def forward(self, vis: Tensor, audio: Tensor, t: int) -> Tensor:
        """vis (b*t, h, w, dim), audio (b*t, 1, dim) -> audio update (b*t, 1, dim)."""
        bt, h, w, _ = vis.shape
        v = F.silu(self.conv2d(self.in_proj_vis(vis).permute(0, 3, 1, 2)))          # (bt, d, h, w)
        a, z = self.in_proj_audio(audio).chunk(2, dim=-1)                           # (bt, 1, d) each
        if self.inter_frame:
            b = bt // t
            v = v.reshape(b, t, -1, h, w).transpose(1, 2)                           # (b, d, t, h, w)
            a = _causal_conv1d(a.reshape(b, t, -1).transpose(1, 2), self.conv1d)    # (b, d, t)
        else:
            v = v.unsqueeze(2)                                                      # (bt, d, 1, h, w)
            a = _causal_conv1d(a.transpose(1, 2), self.conv1d)                      # (bt, d, 1)
        vs = _directions([v], ("thw", "twh"), _HALVES)                              # (., 4, d, L)
        ra = torch.flip(a, dims=[-1])
        seq_a = torch.stack([a, a, ra, ra], dim=1) if self.inter_frame else a.unsqueeze(1).expand(-1, 4, -1, -1)
        n = seq_a.shape[-1]
        y = self._scan(torch.cat([vs, seq_a], dim=-1))[..., -n:]                    # (., 4, d, n)
        if self.inter_frame:
            y = (y[:, 0] + y[:, 1] + torch.flip(y[:, 2] + y[:, 3], dims=[-1])).transpose(1, 2)  # (b, t, d)
            y = y.reshape(bt, 1, -1)
        else:
            y = y.sum(dim=1).transpose(1, 2)                                        # (bt, 1, d)
        return self._gate_out(y, z)


class AudioToVisionFusion(_MultiDirectionSSM):
    """A2V selective scan (K=4) per clip: T audio tokens prepended to THW / TWH (reversed: flipped audio prepended
    to the flipped visual sequence); the outputs at the visual positions update the visual map."""

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        d = cfg.d_inner
        self.in_proj_vis = nn.Linear(cfg.dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, cfg.d_conv, padding=(cfg.d_conv - 1) // 2, groups=d)
        self.in_proj_audio = nn.Linear(cfg.dim, d, bias=False)
        self.conv1d = nn.Conv1d(d, d, cfg.d_conv_1d, groups=d, padding=cfg.d_conv_1d - 1)
        self._init_ssm(cfg, 4)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, cfg.dim, bias=False)

    def forward(self, vis: Tensor, audio: Tensor, t: int) -> Tensor:
        """vis (b*t, h, w, dim), audio (b, t, dim) -> visual update (b*t, h, w, dim)."""
        bt, h, w, _ = vis.shape
        b = bt // t
        v, z = self.in_proj_vis(vis).chunk(2, dim=-1)
        v = F.silu(self.conv2d(v.permute(0, 3, 1, 2)))
        v = v.reshape(b, t, -1, h, w).transpose(1, 2)                               # (b, d, t, h, w)
        a = _causal_conv1d(self.in_proj_audio(audio).transpose(1, 2), self.conv1d)  # (b, d, t)
        ra = torch.flip(a, dims=[-1])
        seq_a = torch.stack([a, a, ra, ra], dim=1)
        y = self._scan(torch.cat([seq_a, _directions([v], ("thw", "twh"), _HALVES)], dim=-1))[..., t:]
        y = _merge(y, [(t, h, w)], ("thw", "twh"), _HALVES)[0]                      # (b, d, t, h, w)
        return self._gate_out(y.permute(0, 2, 3, 4, 1).reshape(bt, h, w, -1), z)


class AudioVisionFusion(nn.Module):
    """Pre-norm residual wrapper: V2A (``vision_to_audio_layer``, residual on the audio) or A2V
    (``audio_to_vision_layer``, residual on the visual map)."""

    def __init__(self, cfg: "AVSMambaConfig", audio_to_vision: bool, inter_frame: bool = False) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(cfg.dim, eps=cfg.block_norm_eps)
        self.norm_a = nn.LayerNorm(cfg.dim, eps=cfg.block_norm_eps)
        self.drop_path = DropPath(cfg.drop_path)
        self.audio_to_vision = audio_to_vision
        if audio_to_vision:
            self.audio_to_vision_layer = AudioToVisionFusion(cfg)
        else:
            self.vision_to_audio_layer = VisionToAudioFusion(cfg, inter_frame)

    def forward(self, vis: Tensor, audio: Tensor, t: int) -> Tensor:
        v, a = self.norm_v(vis), self.norm_a(audio)
        if self.audio_to_vision:
            return vis + self.drop_path(self.audio_to_vision_layer(v, a, t))
        return audio + self.drop_path(self.vision_to_audio_layer(v, a, t))


class TemporalLayer(nn.Module):
    """CIP context block: ``x + DropPath(Mamba3D(LN(x)))`` on (b, t, h, w, dim)."""

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        self.ln_l = nn.LayerNorm(cfg.dim, eps=cfg.block_norm_eps)
        self.mamba_block = Mamba3D(cfg)
        self.drop_path = DropPath(cfg.drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mamba_block(self.ln_l(x)))


class CrossModalFPN(nn.Module):
    """Contextual Integration Pyramid: top-down res5 -> res2, per level adapter (1x1, no bias), Temporal Mamba,
    A2V with the initial audio, nearest-upsampled sum, 3x3 conv + ReLU; then ``mask_features`` (3x3).

    ``adapter_i`` / ``layer_i`` / ``self_attns[j]`` / ``cross_attns[j]``: i = 1 (res2) .. 4 (res5), j = 0 (res5)
    .. 3 (res2). NOTE: the res2 level runs ``self_attns[2]`` (res3's), as the public code does; ``self_attns[3]``
    exists (for the checkpoint) and is never run.
    """

    def __init__(self, cfg: "AVSMambaConfig") -> None:
        super().__init__()
        dim = cfg.dim
        for i in range(1, 5):
            adapter = nn.Conv2d(dim, dim, 1, bias=False)
            layer = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
            for conv in (adapter, layer):
                nn.init.kaiming_uniform_(conv.weight, a=1)
            self.add_module(f"adapter_{i}", adapter)
            self.add_module(f"layer_{i}", layer)
        self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self.self_attns = nn.ModuleList(TemporalLayer(cfg) for _ in range(4))
        self.cross_attns = nn.ModuleList(AudioVisionFusion(cfg, audio_to_vision=True) for _ in range(4))

    def forward(self, audio: Tensor, memory: Sequence[Tensor], t: int, mask_feature: Tensor) -> Tensor:
        """audio (b, t, dim) (the projected audio, not MAD's); memory: res3, res4, res5 (bt, dim, h, w);
        mask_feature: res2 (bt, dim, h, w) -> mask features (bt, dim, h2, w2)."""
        levels = [*memory[::-1], mask_feature]                                      # res5, res4, res3, res2
        y = None
        for j, x in enumerate(levels):
            level = 4 - j
            f = getattr(self, f"adapter_{level}")(x)
            bt, c, h, w = f.shape
            f = f.permute(0, 2, 3, 1).reshape(bt // t, t, h, w, c)
            f = self.self_attns[min(j, 2)](f).flatten(0, 1)                          # res2 re-uses res3's
            f = self.cross_attns[j](f, audio, t).permute(0, 3, 1, 2)
            if y is not None:
                f = f + F.interpolate(y, size=(h, w), mode="nearest")
            y = F.relu(getattr(self, f"layer_{level}")(f))
        return self.mask_features(y)


class FFN(nn.Module):
    """1x1-conv MLP with ReLU between layers (the head's "MLP" on the intermediate mask)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class _Upsample(nn.Module):
    """Bilinear resize by a fixed factor (align_corners=False)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AVSMambaConfig:
    """One AVS-Mamba variant's architecture. Spec ambiguities, each decided here once:

    * resolution: the spec's 224 (dataloader comments, AVSS ``crop_size``); the public loaders' ``img_size``
      default is 512 (upstream-code.md §4). The model has no positional embedding: any multiple of 32 runs.
    * Temporal Mamba's "3D" conv: kernel (1, d_conv, d_conv) as the code (no temporal extent), run as a Conv2d.
    * CIP upsampling: nearest (code), not bilinear (paper Fig. 5); res2 re-uses res3's Temporal Mamba (code).
    * MixFFN in every MTE layer (code; absent from the paper's text).
    * ResNet-50: the code's ``B2_ResNet`` (``layer3_1``/``layer4_1`` run, ``*_2`` unused), ImageNet init.
    * VGGish runs inside the model (``audio_backbone``), frozen (``requires_grad=False``), as the code.
    * AVSS padded frames: an optional ``valid`` [B*T] zeroes their backbone features and logits, as the public
      semantic model (``compformer_semantic.py`` @6042af6) does; its training-only heads (``query_embed``,
      ``audio_feature_projection``, ``audio_recons_proj``; rec_loss weight 0) are not built and
      :func:`checkpoint_filter_fn` drops them.
    * Head: FFN hidden ``ffn_hidden`` (2048), fc widths ``head_widths`` (128, 32); only the last decoder layer's
      mask is computed at inference (``forward(..., aux=True)`` returns both, for training).

    Args:
        name, backbone ("r50" | "pvt" | "pvt-test"), setting ("s4" | "ms3" | "avss" | "test").
        audio_backbone: registry name of the VGGish variant inside the model.
        resolution: the input side the variant is exported at (the modules themselves take any multiple of 32).
        frames: T per clip (window). num_classes: 1 (sigmoid) or 71 (AVSS argmax).
        dim: width C (256). d_state N (16), expand (2), dt_rank (None = ceil(dim / 16)), d_conv (3), d_conv_1d (4).
        encoder_layers, decoder_layers (2, 2); mlp_ratio (MixFFN, 4); norm_groups (input_proj GroupNorm, 32).
        drop_path (0.1, training only); block_norm_eps (1e-6; the blocks' pre-norms).
        dt_min, dt_max, dt_init_floor: dt initialisation range.
    """

    name: str
    backbone: str
    setting: str
    audio_backbone: str = "vggish"
    resolution: int = 224
    frames: int = 5
    num_classes: int = 1
    audio_dim: int = 128
    dim: int = 256
    d_state: int = 16
    expand: int = 2
    dt_rank: Optional[int] = None
    d_conv: int = 3
    d_conv_1d: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    num_feature_levels: int = 3
    mlp_ratio: int = 4
    norm_groups: int = 32
    ffn_hidden: int = 2048
    ffn_layers: int = 3
    head_widths: tuple[int, int] = (128, 32)
    scale_factor: int = 4
    drop_path: float = 0.1
    block_norm_eps: float = 1e-6
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def dt_rank_(self) -> int:
        """dt_rank resolved ("auto" = ceil(dim / 16))."""
        return math.ceil(self.dim / 16) if self.dt_rank is None else self.dt_rank


class AVSMamba(nn.Module):
    """AVS-Mamba (public code's ``CompFormer`` with every component on, scan_order 8).

    ``forward(frames [B*T,3,R,R], log_mel [B*T,1,96,64]) -> logits [B*T,num_classes,R,R]`` is
    ``decode(*fuse_features(*encode_frames(...)))``: per frame (cacheable), the window, per frame again.
    """

    def __init__(self, cfg: AVSMambaConfig) -> None:
        super().__init__()
        if cfg.backbone not in _BACKBONES:
            raise ValueError(f"{cfg.name}: unknown backbone {cfg.backbone!r} (known: {', '.join(_BACKBONES)})")
        self.cfg = cfg
        dim = cfg.dim
        self.audio_backbone = model_builder(cfg.audio_backbone)()
        self.audio_backbone.requires_grad_(False)
        build, widths = _BACKBONES[cfg.backbone]
        self.vision_backbone = build()
        self.audio_proj = nn.Linear(cfg.audio_dim, dim)
        self.mamba_encoder = nn.ModuleList(MultiscaleTemporalEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.mamba_decoder = nn.ModuleList(
            nn.ModuleList(nn.ModuleList([AudioVisionFusion(cfg, False, inter_frame=False),
                                         AudioVisionFusion(cfg, False, inter_frame=True)])
                          for _ in range(cfg.num_feature_levels))
            for _ in range(cfg.decoder_layers))
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(cfg.norm_groups, dim))
                                        for c in widths)
        self.cmfpn = CrossModalFPN(cfg)
        self.mlp = FFN(1, cfg.ffn_hidden, dim, cfg.ffn_layers)
        mid, low = cfg.head_widths
        self.fc = nn.Sequential(nn.Conv2d(dim, mid, 3, padding=1), _Upsample(cfg.scale_factor),
                                nn.Conv2d(mid, low, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(low, cfg.num_classes, 1, bias=False))

    def _check(self, frames: Tensor, log_mel: Tensor) -> None:
        t = self.cfg.frames
        if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] % t \
                or frames.shape[0] == 0 or frames.shape[2] % 32 or frames.shape[3] % 32:
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: {self.cfg.name} expects [B*{t}, 3, R, R'] with R, R' multiples of 32 "
                             f"(ImageNet-normalised RGB), got {got}")
        if not isinstance(log_mel, Tensor) or tuple(log_mel.shape) != (frames.shape[0], 1, 96, 64):
            got = list(log_mel.shape) if isinstance(log_mel, Tensor) else type(log_mel).__name__
            raise ValueError(f"log_mel: expected [{frames.shape[0]}, 1, 96, 64] (one VGGish example per frame), "
                             f"got {got}")

    def _valid(self, valid: Optional[Tensor], n: int) -> Optional[Tensor]:
        """AVSS per-frame validity [N] (1 = real frame, 0 = padding) -> float [N, 1, 1, 1], or None."""
        if valid is None:
            return None
        if self.cfg.setting != "avss":
            raise ValueError(f"valid: {self.cfg.name} takes no per-frame validity mask (only the AVSS variants do)")
        if not isinstance(valid, Tensor) or tuple(valid.shape) != (n,):
            got = list(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
            raise ValueError(f"valid: expected a tensor [{n}] (1 = real frame, 0 = padding), got {got}")
        return valid.to(torch.float32).reshape(n, 1, 1, 1)

    def encode_frames(self, frames: Tensor, log_mel: Tensor, valid: Optional[Tensor] = None
                      ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Per frame (no cross-frame op; any number of frames): audio [N, dim] (VGGish + audio_proj) and the four
        projected maps [N, dim, R/4..R/32], fine to coarse. AVSS ``valid`` [N] zeroes the padded frames' backbone
        features before the projections, as the public semantic model does."""
        mask = self._valid(valid, frames.shape[0])
        audio = self.audio_proj(self.audio_backbone(log_mel))
        h, maps = frames, []
        for i, proj in enumerate(self.input_proj):
            h = self.vision_backbone.forward_stage(i, h)
            maps.append(proj(h if mask is None else h * mask))
        return audio, tuple(maps)

    def fuse_features(self, audio: Tensor, maps: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The window (the only cross-frame part): MTE, MAD and CIP on B*T frames of ``encode_frames`` output ->
        (mask features [B*T, dim, R/4, R/4], the audio query after each decoder layer, each [B*T, 1, dim])."""
        t = self.cfg.frames
        srcs = [m.permute(0, 2, 3, 1) for m in maps[1:]]                            # res3..res5, channels-last
        for layer in self.mamba_encoder:
            srcs = layer(srcs, t)
        query, hs = audio.unsqueeze(1), []                                          # (bt, 1, dim)
        for blocks in self.mamba_decoder:
            for src, (frame_level, temporal_level) in zip(srcs, blocks):
                query = temporal_level(src, frame_level(src, query, t), t)
            hs.append(query)
        memory = [s.permute(0, 3, 1, 2) for s in srcs]
        return self.cmfpn(audio.reshape(-1, t, audio.shape[-1]), memory, t, maps[0]), hs

    def decode(self, mask_features: Tensor, query: Tensor) -> Tensor:
        """Per frame (any number): the head. einsum('bchw,blc->blhw') as a batched MatMul, FFN + residual, fc ->
        logits [N, num_classes, R, R]."""
        n, c, h, w = mask_features.shape
        inter = torch.matmul(query, mask_features.reshape(n, c, h * w)).reshape(n, -1, h, w)
        return self.fc(self.mlp(inter) + mask_features)

    def fuse(self, audio: Tensor, maps: Sequence[Tensor], aux: bool = False) -> Tensor | list[Tensor]:
        """``decode(*fuse_features(...))`` with the last decoder layer's query: logits [B*T, num_classes, R, R];
        with ``aux``, the list of both decoder layers' logits (the last is the output), for training."""
        mask_features, hs = self.fuse_features(audio, maps)
        outs = [self.decode(mask_features, q) for q in (hs if aux else hs[-1:])]
        return outs if aux else outs[0]

    def forward(self, frames: Tensor, log_mel: Tensor, valid: Optional[Tensor] = None,
                aux: bool = False) -> Tensor | list[Tensor]:
        """frames [B*T,3,R,R] ImageNet-normalised, log_mel [B*T,1,96,64], valid [B*T] (AVSS, optional) ->
        logits [B*T,num_classes,R,R] (padded frames' logits zeroed)."""
        self._check(frames, log_mel)
        audio, maps = self.encode_frames(frames, log_mel, valid)
        out = self.fuse(audio, maps, aux=aux)
        mask = self._valid(valid, frames.shape[0])
        if mask is None:
            return out
        return [o * mask for o in out] if aux else out * mask


_TRAINING_ONLY = ("query_embed.", "audio_feature_projection.", "audio_recons_proj.")


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: Optional[nn.Module] = None) -> dict[str, Tensor]:
    """An official state_dict -> ours: a ``module.`` prefix (DataParallel) removed, the semantic model's
    training-only heads (never run at inference) dropped; native keys pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.startswith(_TRAINING_ONLY):
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Configurations and registrations
# ----------------------------------------------------------------------------------------------------------------

_FAMILY_CFG = PretrainedCfg(name="avs-mamba", family="avs-mamba", audio_encoder="vggish", input_size=224,
                            output_size=224, origin_url="https://github.com/SitongGong/AVS-Mamba",
                            paper="arXiv:2501.07810")
_AVSS = dict(frames_per_clip=10, output_kind="semantic", num_classes=71, class_names=AVSBENCH_CLASSES,
             palette=voc_palette(71), threshold=None)


def _cfg(name: str, setting: str, backbone: str, **kwargs) -> PretrainedCfg:
    """A variant's entry: the family default with its name, setting and backbone (no weights are released)."""
    return replace(_FAMILY_CFG, name=name, setting=setting, backbone=backbone, **kwargs)


default_cfgs = register_pretrained_cfgs([
    _cfg("avs-mamba-s4-r50", "s4", "r50"),
    _cfg("avs-mamba-s4-pvt", "s4", "pvt"),
    _cfg("avs-mamba-ms3-r50", "ms3", "r50"),
    _cfg("avs-mamba-ms3-pvt", "ms3", "pvt"),
    _cfg("avs-mamba-avss-r50", "avss", "r50", **_AVSS),
    _cfg("avs-mamba-avss-pvt", "avss", "pvt", **_AVSS),
    # Tiny random-weight variant for fast tests (no checkpoint exists).
    _cfg("avs-mamba-test", "test", "pvt-test", audio_encoder="vggish-test", input_size=64, output_size=64),
])

def _create_avs_mamba(name: str, **kwargs) -> AVSMamba:
    """Build variant ``name``: its pretrained config fixes backbone, task and T; ``kwargs`` the architecture."""
    pcfg = pretrained_cfg(name)
    return AVSMamba(variant_config(AVSMambaConfig, name, "AVS-Mamba", kwargs, audio_backbone=pcfg.audio_encoder,
                                   resolution=pcfg.input_size, frames=pcfg.frames_per_clip,
                                   num_classes=pcfg.num_classes))


@register_model("avs-mamba-s4-r50", checkpoint_filter_fn)
def avs_mamba_s4_r50(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-s4-r50", **kwargs)


@register_model("avs-mamba-s4-pvt", checkpoint_filter_fn)
def avs_mamba_s4_pvt(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-s4-pvt", **kwargs)


@register_model("avs-mamba-ms3-r50", checkpoint_filter_fn)
def avs_mamba_ms3_r50(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-ms3-r50", **kwargs)


@register_model("avs-mamba-ms3-pvt", checkpoint_filter_fn)
def avs_mamba_ms3_pvt(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-ms3-pvt", **kwargs)


@register_model("avs-mamba-avss-r50", checkpoint_filter_fn)
def avs_mamba_avss_r50(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-avss-r50", **kwargs)


@register_model("avs-mamba-avss-pvt", checkpoint_filter_fn)
def avs_mamba_avss_pvt(**kwargs) -> AVSMamba:
    return _create_avs_mamba("avs-mamba-avss-pvt", **kwargs)


@register_model("avs-mamba-test", checkpoint_filter_fn)
def avs_mamba_test(**kwargs) -> AVSMamba:
    model_args = dict(dim=16, d_state=4, norm_groups=8, ffn_hidden=32, head_widths=(16, 8))
    return _create_avs_mamba("avs-mamba-test", **dict(model_args, **kwargs))
