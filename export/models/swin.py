"""Swin Transformer (hierarchical vision transformer with shifted windows) as a 4-stage feature encoder.

Paper: Ze Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(arXiv:2103.14030); reference code https://github.com/microsoft/Swin-Transformer (MIT). Written for this project
from the paper; nothing is copied. Parameter names follow the common timm layout (``patch_embed.proj``,
``layers.{i}.downsample``, ``layers.{i}.blocks.{j}.attn.relative_position_bias_table``, ...) so that a converted
ImageNet checkpoint can be mapped onto it, but there is no runtime dependency on timm.

Export: the input resolution is fixed at construction, so window partitioning, the cyclic shift (``torch.roll``:
Slice + Concat in ONNX), the shifted-window attention masks and the relative-position index are static: the masks
and index are buffers computed once, and the bias gather is constant-folded by ONNX Runtime and TensorRT.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .layers import Mlp

__all__ = ["SwinTransformer", "swin_base_384", "swin_test", "SWIN_B_WIDTHS", "SWIN_TEST_WIDTHS"]

SWIN_B_WIDTHS = (128, 256, 512, 1024)
SWIN_TEST_WIDTHS = (8, 16, 32, 64)


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B,H,W,C] -> [B*nW, window*window, C] (windows in row-major order)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: [B*nW, window*window, C] -> [B,H,W,C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> Tensor:
    """[w*w, w*w] index into the (2w-1)^2 bias table for every (query, key) pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """[nW, w*w, w*w] additive mask (0 or -100) keeping attention inside the regions a cyclic shift joined."""
    region = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)                       # [nW, w*w]
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B*nW, N, C], mask [nW, N, N] or None -> [B*nW, N, C]."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)                          # [B*nW, heads, N, N]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.reshape(bw, self.heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """x + W-MSA(LN(x)) (windows cyclically shifted by ``shift``), then x + MLP(LN(x)); tokens [B,H,W,C]."""

    def __init__(self, dim: int, heads: int, size: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if size <= window:          # one window covers the map: no shift (as the paper's last stage at 224/384)
            window, shift = size, 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(size, size, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, self.window), self.attn_mask), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> concat (4C) -> LN -> Linear(4C, 2C): halves H and W."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Optional patch merging, then ``depth`` blocks alternating regular and shifted windows."""

    def __init__(self, dim_in: int, dim: int, depth: int, heads: int, size: int, window: int, mlp_ratio: float,
                 downsample: bool) -> None:
        super().__init__()
        self.downsample = PatchMerging(dim_in) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, size, window, 0 if i % 2 == 0 else window // 2,
                                              mlp_ratio) for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class PatchEmbed(nn.Module):
    """patch x patch conv (stride patch) + LN: NCHW image -> [B,H/p,W/p,C]."""

    def __init__(self, dim: int, patch: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin encoder at a fixed input resolution; ``forward_features`` returns the four stage maps (NCHW, each
    through its own output LayerNorm ``norm{i}``, the usual dense-prediction taps), strides 4/8/16/32.

    Args:
        img_size: input side (fixed: windows and masks are built for it); must be divisible by 32 * window
            at the stage where the map still holds more than one window.
        widths: channels of the four stages (C, 2C, 4C, 8C).
        depths, heads: blocks and attention heads per stage.
        window: window side (12 for Swin-B at 384).
        mlp_ratio: MLP hidden width / channels.
    """

    def __init__(self, img_size: int, widths: Sequence[int], depths: Sequence[int], heads: Sequence[int],
                 window: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.img_size, self.stage_channels = img_size, tuple(widths)
        sizes = [img_size // s for s in (4, 8, 16, 32)]
        for size in sizes:
            if size % min(window, size) or size < 1:
                raise ValueError(f"Swin at {img_size} px: a {size}x{size} stage map is not a whole number of "
                                 f"{window}x{window} windows")
        self.patch_embed = PatchEmbed(widths[0])
        self.layers = nn.ModuleList(
            SwinStage(widths[max(i - 1, 0)], widths[i], depths[i], heads[i], sizes[i], window, mlp_ratio, i > 0)
            for i in range(4))
        for i, dim in enumerate(widths):
            setattr(self, f"norm{i}", nn.LayerNorm(dim))
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Images [B,3,S,S] (S = img_size) -> 4 maps [B,C_i,S/2^(i+2),S/2^(i+2)]."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"Swin built for {self.img_size}x{self.img_size} input, got {list(x.shape)}")
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outs


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def swin_base_384(img_size: int = 384) -> SwinTransformer:
    """Swin-B (C = 128, depths 2/2/18/2, heads 4/8/16/32, window 12): the ImageNet-22k 384-px configuration."""
    return SwinTransformer(img_size, SWIN_B_WIDTHS, (2, 2, 18, 2), (4, 8, 16, 32), window=12)


def swin_test(img_size: int = 64) -> SwinTransformer:
    """A tiny Swin for tests: widths 8/16/32/64, depths 2/2/2/2 (every stage has a shifted block), window 2."""
    return SwinTransformer(img_size, SWIN_TEST_WIDTHS, (2, 2, 2, 2), (1, 1, 2, 2), window=2, mlp_ratio=2.0)
