"""PVT-v2-b5 as SelM uses it: four stages, each followed by an audio-visual fusion block inside the encoder.

Paper: Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022
(https://github.com/whai362/PVT, Apache-2.0). SelM's copy (https://github.com/Cyyzpoi/SelM, ``model/pvt.py``,
Apache-2.0) adds ``DAM_Fusion1..4`` after the stage norms; the fusion output feeds the next stage's patch
embedding. Written from ``shared/specs/selm.md`` §2.1, not copied. Inference only: drop-path and dropout
(identity in eval) are left out; they hold no weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch.nn as nn
from torch import Tensor

__all__ = ["PyramidVisionTransformerV2", "pvt_v2_b5", "pvt_v2_test", "pvt_v2_demo", "B5_WIDTHS", "TEST_WIDTHS",
           "DEMO_WIDTHS"]

B5_WIDTHS = (64, 128, 320, 512)
TEST_WIDTHS = (8, 16, 16, 16)
DEMO_WIDTHS = (16, 32, 64, 128)


class DWConv(nn.Module):
    """3x3 depthwise conv over the token grid (the MLP's positional mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """fc1 -> DWConv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Attention(nn.Module):
    """Multi-head attention whose keys/values come from a grid shrunk by ``sr_ratio`` (strided conv + LN)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # NOTE: eps 1e-5 here, unlike the block norms (1e-6)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.sr(x.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1).permute(0, 2, 1)
            x = self.norm(x)
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + Mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv (kernel > stride) + LN; returns tokens and the grid size."""

    def __init__(self, in_chans: int, dim: int, patch: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PyramidVisionTransformerV2(nn.Module):
    """PVT-v2 encoder without a head; ``fusions`` (one module per stage) are registered as ``DAM_Fusion1..4``.

    ``forward_stage(i, x)`` runs stage ``i`` (0..3) on an NCHW map and returns the stage's NCHW output (after
    the stage norm, before the fusion block, which the caller applies).
    """

    def __init__(self, embed_dims: Sequence[int], num_heads: Sequence[int], mlp_ratios: Sequence[int],
                 depths: Sequence[int], sr_ratios: Sequence[int], fusions: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.stage_channels = tuple(embed_dims)
        for i, dim in enumerate(embed_dims):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(3 if i == 0 else embed_dims[i - 1], dim,
                                                                 7 if i == 0 else 3, 4 if i == 0 else 2))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i]) for _ in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
        self.apply(_init_weights)
        for i, fusion in enumerate(fusions):
            setattr(self, f"DAM_Fusion{i + 1}", fusion)

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        """Patch-embed, transformer blocks and norm of stage ``index``; NCHW in, NCHW out."""
        x, h, w = getattr(self, f"patch_embed{index + 1}")(x)
        for blk in getattr(self, f"block{index + 1}"):
            x = blk(x, h, w)
        x = getattr(self, f"norm{index + 1}")(x)
        return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


def _init_weights(m: nn.Module) -> None:
    """PVT-v2's init: truncated-normal Linear (std 0.02), unit LayerNorm, He-normal (fan-out) conv."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pvt_v2_b5(fusions: Sequence[nn.Module] = ()) -> PyramidVisionTransformerV2:
    """PVT-v2-b5: widths 64/128/320/512, heads 1/2/5/8, MLP ratio 4, depths 3/6/40/3, SR ratios 8/4/2/1."""
    return PyramidVisionTransformerV2(embed_dims=B5_WIDTHS, num_heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4),
                                      depths=(3, 6, 40, 3), sr_ratios=(8, 4, 2, 1), fusions=fusions)


def pvt_v2_test(fusions: Sequence[nn.Module] = ()) -> PyramidVisionTransformerV2:
    """A tiny PVT-v2 for golden tests: widths 8/16/16/16, one head and one block per stage, MLP ratio 2."""
    return PyramidVisionTransformerV2(embed_dims=TEST_WIDTHS, num_heads=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                                      depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), fusions=fusions)


def pvt_v2_demo(fusions: Sequence[nn.Module] = ()) -> PyramidVisionTransformerV2:
    """A light PVT-v2 for the trainable demo variant: widths 16/32/64/128, heads 1/1/2/2, one block per stage,
    MLP ratio 2, SR ratios 4/2/1/1."""
    return PyramidVisionTransformerV2(embed_dims=DEMO_WIDTHS, num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2),
                                      depths=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), fusions=fusions)
