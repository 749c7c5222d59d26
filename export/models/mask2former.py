"""Mask2Former parts used by COMBO: multi-scale deformable attention, its pixel decoder, the masked decoder.

Paper: B. Cheng, I. Misra, A. G. Schwing, A. Kirillov, R. Girdhar, "Masked-attention Mask Transformer for Universal
Image Segmentation", CVPR 2022; deformable attention from X. Zhu et al., "Deformable DETR", ICLR 2021. Written from
COMBO's copy of the Mask2Former code (github.com/yannqi/COMBO-AVS @cb8af1c: ``pixel_decoder/msdeformattn.py``,
``pixel_decoder/ops/``, ``transformer_decoder/transformer_decoder.py``, ``meta_arch/mask_former_head.py``; both
Apache-2.0) and ``shared/specs/combo.md``; nothing is copied. Module and parameter names follow that code, so under
COMBO's prefixes ``sem_seg_head.pixel_decoder.`` and ``sem_seg_head.predictor.`` the state_dict keys equal the
official checkpoint's.

What differs from upstream, for export (the outputs are the same):

* Deformable sampling always takes the pure-PyTorch path, ``F.grid_sample`` (bilinear, zero padding,
  ``align_corners=False``) on ``2 * location - 1``. That is the CUDA op's sampling (``h = y * H - 0.5``, zero
  outside) and exports to stock ONNX ``GridSample``.
* Level shapes and start indices are Python ints, so reference points, sine encodings and the offset normaliser
  are constants of the exported graph.
* The decoder's "a query that may attend nowhere attends everywhere" edit is functional
  (:func:`release_blocked_rows`), its mask einsum a MatMul, and the auxiliary predictions are built only with
  ``aux=True``.
* The pixel decoder keeps its input dtype (upstream casts to fp32 because its CUDA op had no fp16 kernel).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MSDeformAttn", "MSDeformAttnPixelDecoder", "MultiScaleMaskedTransformerDecoder", "ms_deform_attn_core",
           "release_blocked_rows", "sine_position_embedding", "FEATURE_STRIDES"]

FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
_ENCODER_FEATURES = ("res3", "res4", "res5")     # COMBO's DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES
_AUDIO_LAYOUTS = ("official", "per_sample")


def _c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill``: Kaiming-uniform with a=1 and zero bias (Caffe2's XavierFill)."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention
# ----------------------------------------------------------------------------------------------------------------

def ms_deform_attn_core(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """Weighted bilinear samples of every level, the CUDA op's result computed with ``F.grid_sample``.

    Args:
        value: [N, S, M, D] values of all levels, flattened row-major per level, levels concatenated.
        spatial_shapes: (H, W) of each level, static ints.
        sampling_locations: [N, Lq, M, L, P, 2] (x, y), 0..1 across each level's map (pixel centres at
            (i + 0.5) / size); outside the map samples read zeros.
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M * D].
    """
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, v in enumerate(value.split([h * w for h, w in spatial_shapes], dim=1)):
        h, w = spatial_shapes[lvl]
        v = v.flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)                 # [N*M, Lq, P, 2]
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)           # [N*M, D, Lq]
    return out.view(n, m * d, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query reads ``n_points`` bilinear samples per level and head.

    Args:
        d_model: channels; must be divisible by ``n_heads``.
        n_levels: feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}: pick a multiple")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start on a ring: head h points at angle 2*pi*h/heads, point p at distance p+1 (in pixels)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = ring.view(self.n_heads, 1, 1, 2) * steps.expand(1, self.n_levels, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: Sequence[tuple[int, int]], level_start: Sequence[int],
                padding_mask: Optional[Tensor] = None) -> Tensor:
        """Attend from each query around its reference point.

        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] (x, y), normalised to 0..1 per level.
            value_input: [N, S, C], S = sum of H*W over levels.
            spatial_shapes: (H, W) per level, static ints (coarsest first in the pixel decoder).
            level_start: index of each level's first token in ``value_input``.
            padding_mask: optional [N, S] bool, True where the value is padding (read as zero).

        Returns:
            [N, Lq, C].
        """
        n, lq, _ = query.shape
        shapes = [(int(h), int(w)) for h, w in spatial_shapes]
        if len(shapes) != self.n_levels:
            raise ValueError(f"got {len(shapes)} spatial shapes for an MSDeformAttn of {self.n_levels} levels")
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        if [int(s) for s in level_start] != starts:
            raise ValueError(f"level_start {list(level_start)} does not match spatial_shapes {shapes} "
                             f"(expected {starts}): pass the cumulative sums of H*W")
        if value_input.shape[1] != starts[-1] + shapes[-1][0] * shapes[-1][1]:
            raise ValueError(f"value_input has {value_input.shape[1]} tokens but spatial_shapes {shapes} "
                             f"hold {starts[-1] + shapes[-1][0] * shapes[-1][1]}")
        if reference_points.shape[-1] != 2:
            raise ValueError(f"reference_points must end in (x, y), got last dim {reference_points.shape[-1]} "
                             "(box references are not supported)")
        value = self.value_proj(value_input)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        normaliser = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))


# ----------------------------------------------------------------------------------------------------------------
# Pixel decoder
# ----------------------------------------------------------------------------------------------------------------

def sine_position_embedding(h: int, w: int, num_pos_feats: int, device=None, dtype=torch.float32,
                            temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine encoding of an unpadded (h, w) map: [1, 2 * num_pos_feats, h, w], y half first.

    Coordinates are 1..size scaled to (0, 2*pi] (``normalize=True``, eps 1e-6), computed in fp32 as upstream.
    """
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    def encode(coord: Tensor) -> Tensor:                       # [size] -> [size, num_pos_feats], sin/cos interleaved
        phase = coord[:, None] / dim_t
        return torch.stack((phase[:, 0::2].sin(), phase[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(h, w, num_pos_feats)
    pos_x = encode(x)[None, :, :].expand(h, w, num_pos_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0).to(dtype)


class PositionEmbeddingSine(nn.Module):
    """Module form of :func:`sine_position_embedding` (no parameters); reads only the input's static shape."""

    def __init__(self, num_pos_feats: int = 64) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, 2 * num_pos_feats, H, W]."""
        pos = sine_position_embedding(x.shape[-2], x.shape[-1], self.num_pos_feats, x.device, x.dtype)
        return pos.expand(x.shape[0], -1, -1, -1)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], device=None, dtype=torch.float32) -> Tensor:
    """Every token's own pixel centre, normalised, repeated for each level: [1, S, L, 2] (x, y).

    Unpadded maps have valid ratio 1, so upstream's per-level rescaling is the identity.
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        points.append(torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), -1).reshape(-1, 2))
    ref = torch.cat(points, 0)
    return ref[None, :, None, :].expand(1, -1, len(spatial_shapes), 2).to(dtype)


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.0, n_levels: int = 3,
                 n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Sequence[tuple[int, int]],
                level_start: Sequence[int], padding_mask: Optional[Tensor] = None) -> Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes,
                                                            level_start, padding_mask)))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of encoder layers sharing the reference points."""

    def __init__(self, num_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MSDeformAttnTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers

    def forward(self, src: Tensor, spatial_shapes: Sequence[tuple[int, int]], level_start: Sequence[int],
                pos: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        ref = encoder_reference_points(spatial_shapes, src.device, src.dtype).expand(src.shape[0], -1, -1, -1)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start, padding_mask)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds level embeddings to the positions, and runs the deformable encoder."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, dim_feedforward: int = 1024,
                 dropout: float = 0.0, num_feature_levels: int = 3, enc_n_points: int = 4) -> None:
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.encoder = MSDeformAttnTransformerEncoder(num_encoder_layers, d_model=d_model, d_ffn=dim_feedforward,
                                                      dropout=dropout, n_levels=num_feature_levels, n_heads=nhead,
                                                      n_points=enc_n_points)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[Tensor], pos_embeds: Sequence[Tensor]
                ) -> tuple[Tensor, list[tuple[int, int]], list[int]]:
        """Maps [N, C, h_l, w_l] -> (memory [N, S, C], level shapes, level start indices)."""
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                         for lvl, p in enumerate(pos_embeds)], 1)
        return self.encoder(src, shapes, starts, pos), shapes, starts


class Conv2dNorm(nn.Conv2d):
    """detectron2's ``Conv2d``: convolution, then an optional ``norm`` and activation (keys ``weight``, ``norm.*``)."""

    def __init__(self, *args, norm: Optional[nn.Module] = None, activation: Optional[nn.Module] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return x if self.activation is None else self.activation(x)


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's pixel decoder as COMBO configures it.

    The deformable encoder runs on res3..res5 (each 1x1 conv + GroupNorm onto ``conv_dim``, sine positions + level
    embedding); an FPN adds res2 (lateral 1x1 conv + GN, bilinear top-down, 3x3 conv + GN + ReLU) and a 1x1
    ``mask_features`` conv gives the stride-4 per-pixel embedding.

    Args:
        in_channels: channels of ``res2``..``res5`` (R50: 256/512/1024/2048; PVT-v2-b5: 64/128/320/512).
        conv_dim: channels inside the decoder (``CONVS_DIM``).
        mask_dim: channels of ``mask_features`` (``MASK_DIM``).
        enc_layers: deformable encoder layers (``TRANSFORMER_ENC_LAYERS``).
        nheads: attention heads.
        n_points: sampling points per head and level.
        dim_feedforward: encoder FFN width (fixed to 1024 upstream).
        dropout: encoder dropout (``MASK_FORMER.DROPOUT``).
        gn_groups: GroupNorm groups (``NORM: GN`` is 32).
        common_stride: stride of ``mask_features``; one FPN level per halving below res3's stride 8.
    """

    def __init__(self, in_channels: dict[str, int], conv_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6,
                 nheads: int = 8, n_points: int = 4, dim_feedforward: int = 1024, dropout: float = 0.0,
                 gn_groups: int = 32, common_stride: int = 4) -> None:
        super().__init__()
        missing = [k for k in FEATURE_STRIDES if k not in in_channels]
        if missing:
            raise ValueError(f"in_channels lacks {missing}: give the channels of res2, res3, res4 and res5")
        if conv_dim % gn_groups:
            raise ValueError(f"conv_dim {conv_dim} is not divisible by gn_groups {gn_groups}")
        self.in_features = sorted(FEATURE_STRIDES, key=FEATURE_STRIDES.get)               # res2 .. res5
        self.transformer_in_features = list(_ENCODER_FEATURES)
        self.transformer_num_feature_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, kernel_size=1), nn.GroupNorm(gn_groups, conv_dim))
            for f in self.transformer_in_features[::-1])                                  # res5 first
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim, nhead=nheads, num_encoder_layers=enc_layers, dim_feedforward=dim_feedforward,
            dropout=dropout, num_feature_levels=self.transformer_num_feature_levels, enc_n_points=n_points)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_dim = mask_dim
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        _c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride
        min_stride = min(FEATURE_STRIDES[f] for f in self.transformer_in_features)
        self.num_fpn_levels = int(math.log2(min_stride) - math.log2(common_stride))
        if self.num_fpn_levels < 0 or 2 ** self.num_fpn_levels * common_stride != min_stride:
            raise ValueError(f"common_stride {common_stride} must be a power of two no larger than {min_stride}")
        for idx, name in enumerate(self.in_features[:self.num_fpn_levels]):               # adapter_1 is res2's
            lateral = Conv2dNorm(in_channels[name], conv_dim, kernel_size=1, bias=False,
                                 norm=nn.GroupNorm(gn_groups, conv_dim))
            output = Conv2dNorm(conv_dim, conv_dim, kernel_size=3, padding=1, bias=False,
                                norm=nn.GroupNorm(gn_groups, conv_dim), activation=nn.ReLU())
            _c2_xavier_fill(lateral)
            _c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Backbone maps {"res2".."res5"} -> (mask_features [N, mask_dim, H/4, W/4], 3 maps coarsest first).

        The three multi-scale maps are the encoder's res5, res4 and res3 levels, as Mask2Former's
        ``forward_features`` returns them (its second output, the res5 level, is the first of these).
        """
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, shapes, _ = self.transformer(srcs, pos)
        n = memory.shape[0]
        out = [z.transpose(1, 2).reshape(n, -1, h, w)
               for z, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]
        for idx, name in enumerate(self.in_features[:self.num_fpn_levels][::-1]):
            level = self.num_fpn_levels - idx
            lateral = getattr(self, f"adapter_{level}")(features[name])
            top_down = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(getattr(self, f"layer_{level}")(lateral + top_down))
        return self.mask_features(out[-1]), out[:self.maskformer_num_feature_levels]


# ----------------------------------------------------------------------------------------------------------------
# Masked-attention transformer decoder
# ----------------------------------------------------------------------------------------------------------------

def release_blocked_rows(attn_mask: Tensor) -> Tensor:
    """Let a query whose mask blocks every key attend to all keys (no softmax over nothing).

    The functional form of upstream's in-place ``attn_mask[torch.where(attn_mask.sum(-1) == L)] = False``.

    Args:
        attn_mask: [..., Q, L] bool, True = blocked.
    """
    return attn_mask & ~attn_mask.all(-1, keepdim=True)


class SelfAttentionLayer(nn.Module):
    """Self-attention over the queries (post-norm unless ``normalize_before``); sequence-first tensors."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        """tgt, query_pos: [Q, N, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from the queries to one feature level; sequence-first tensors."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        """tgt, query_pos: [Q, N, C]; memory, pos: [L, N, C]; memory_mask: [N * heads, Q, L] bool, True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attn = self.multihead_attn(query=x + query_pos, key=memory + pos, value=memory, attn_mask=memory_mask,
                                   need_weights=False)[0]
        tgt = tgt + self.dropout(attn)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """ReLU feed-forward block with residual and LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 normalize_before: bool = False) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's masked-attention decoder with COMBO's audio queries (``QUERIES_FUSE_TYPE: add``).

    The queries start as ``query_feat + audio``; each of ``dec_layers`` layers cross-attends to one of the three
    levels in turn (coarsest first), masked by the previous prediction (sigmoid < 0.5 at that level's size), then
    self-attends and runs its FFN. A prediction (``decoder_norm`` -> ``class_embed`` / ``mask_embed`` . mask
    features) follows the initial queries and every layer.

    Args:
        num_classes: classes K without "no object" (2 for S4/MS3, 71 for AVSS).
        in_channels: channels of the multi-scale maps (the pixel decoder's ``conv_dim``).
        hidden_dim: query width.
        num_queries: queries.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: decoder layers (COMBO's ``DEC_LAYERS`` 10 minus the initial prediction).
        pre_norm: pre-LayerNorm layers (COMBO: False).
        mask_dim: channels of the mask features.
        enforce_input_project: add the 1x1 ``input_proj`` convs even when ``in_channels == hidden_dim``.
        audio_layout: how ``audio`` [N, C] is spread over the queries. ``"official"`` repeats COMBO's
            ``audio.repeat(1, Q, 1).reshape(Q, N, C)`` on its [N, 1, C] audio token: query q of sample b gets
            ``audio[(q * N + b) // Q]``, so
            with N > 1 a sample's queries take audio from several samples of the batch (the released checkpoints
            were trained and evaluated that way, N = 5 or 40 frames). ``"per_sample"`` gives every query of
            sample b ``audio[b]``. Both agree for N = 1, the per-frame runtime's case.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, pre_norm: bool = False,
                 mask_dim: int = 256, enforce_input_project: bool = False, audio_layout: str = "official") -> None:
        super().__init__()
        if audio_layout not in _AUDIO_LAYOUTS:
            raise ValueError(f"audio_layout {audio_layout!r} is not one of {_AUDIO_LAYOUTS}")
        self.audio_layout = audio_layout
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, normalize_before=pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                self.input_proj.append(nn.Conv2d(in_channels, hidden_dim, kernel_size=1))
                _c2_xavier_fill(self.input_proj[-1])
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _audio_queries(self, audio: Tensor) -> Tensor:
        """[N, C] -> [Q, N, C] in the chosen layout."""
        n, c = audio.shape
        if self.audio_layout == "official":
            return audio[:, None, :].expand(n, self.num_queries, c).reshape(self.num_queries, n, c)
        return audio[None].expand(self.num_queries, n, c)

    def forward_prediction_heads(self, output: Tensor, mask_features: Tensor,
                                 attn_mask_target_size: Optional[tuple[int, int]]
                                 ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Queries [Q, N, C] -> (logits [N, Q, K+1], masks [N, Q, H, W], attention mask [N*heads, Q, h*w] or None).

        The attention mask (True = blocked where the mask, resized to ``attn_mask_target_size``, has sigmoid
        < 0.5) is skipped when the size is None, as after the last layer where it would be unused.
        """
        decoded = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(decoded)
        n, q, _ = decoded.shape
        masks = torch.matmul(self.mask_embed(decoded), mask_features.flatten(2)).view(n, q, *mask_features.shape[-2:])
        if attn_mask_target_size is None:
            return logits, masks, None
        attn = F.interpolate(masks, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        blocked = attn.sigmoid().flatten(2) < 0.5
        blocked = blocked[:, None].expand(n, self.num_heads, q, blocked.shape[-1]).flatten(0, 1)
        return logits, masks, blocked.detach()

    def forward(self, x: Sequence[Tensor], audio: Tensor, mask_features: Tensor, aux: bool = False) -> dict:
        """Predict classes and masks.

        Args:
            x: 3 maps [N, in_channels, h_l, w_l], coarsest first (the pixel decoder's multi-scale output).
            audio: [N, hidden_dim] fused audio after COMBO's audio MLP, added to ``query_feat``.
            mask_features: [N, mask_dim, H, W] (COMBO: after the bilateral fusion).
            aux: also return ``aux_outputs``, the ``dec_layers`` earlier predictions (deep supervision).

        Returns:
            {"pred_logits": [N, Q, K+1], "pred_masks": [N, Q, H, W]} (+ "aux_outputs": list of such dicts).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature maps, got {len(x)}")
        n = mask_features.shape[0]
        if audio.dim() != 2 or audio.shape[0] != n:
            raise ValueError(f"audio must be [N={n}, C], got {list(audio.shape)} (squeeze a [N, 1, C] token)")
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append((int(x[i].shape[-2]), int(x[i].shape[-1])))
            pos.append(self.pe_layer(x[i]).flatten(2).permute(2, 0, 1))
            src.append((self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None])
                       .permute(2, 0, 1))
        query_embed = self.query_embed.weight[:, None, :].expand(-1, n, -1)
        output = self.query_feat.weight[:, None, :].expand(-1, n, -1) + self._audio_queries(audio)

        logits, masks, attn_mask = self.forward_prediction_heads(output, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level], release_blocked_rows(attn_mask), pos=pos[level], query_pos=query_embed)
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            last = i == self.num_layers - 1
            logits, masks, attn_mask = self.forward_prediction_heads(
                output, mask_features, None if last else sizes[(i + 1) % self.num_feature_levels])
            if aux or last:
                predictions.append((logits, masks))
        out = {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1]}
        if aux:
            out["aux_outputs"] = [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]
        return out
