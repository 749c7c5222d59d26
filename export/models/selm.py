"""SelM: Selective Mechanism based Audio-Visual Segmentation, six variants that load the official checkpoints.

Paper: Jiaxu Li, Songsong Yu, Yifan Wang, Lijun Wang, Huchuan Lu, "SelM: Selective Mechanism based Audio-Visual
Segmentation", ACM MM 2024 (doi:10.1145/3664647.3680926). Official code and weights:
https://github.com/Cyyzpoi/SelM (HEAD 7c28674, Apache-2.0). Written from ``shared/specs/selm.md`` and a reading
of the official code; nothing is copied. Module and parameter names follow the official ones so that the
released ``.pth`` files load strictly, buffers included.
``selm-test`` is a tiny random-weight variant (16-wide, tiny PVT-v2, 64x64 input) for golden tests and fast
export tests; each variant's input/output contract and provenance is its ``PretrainedCfg`` in ``default_cfgs``.

Data path (B = 1 clip of T frames)::

    encode_frames: frames [T,3,R,R], VGGish [T,128] -> per stage: backbone stage, DAM (audio<->visual) fusion;
                   in_proj (1x1 conv + GN) -> maps [T,256,h_s,w_s] (s = 1..4), pooled [T,4,256], audio [T,256]
    temporal:      BCSM, 24 Mamba blocks over T (the only cross-frame op, causal) -> gates [T,4,256], audio [T,256]
    decode_frames: gated maps -> CLEVER decoder (3 layers, 2 tokens, hard token assignment) -> logits [T,C,224,224]

Deliberate differences from the official code, none of which changes a B = 1 result:
  * one clip per call; the official BCSM's batch/time gate mixing at B > 1 is not reproduced;
  * explicit reshapes with the config's T (no ``.squeeze()``); the dynamic 1x1 conv of the mask head is a
    batched matmul; the identity ``unfold`` (kernel 1) of DAM is skipped;
  * the Gumbel hard assignment is selectable: ``gumbel="none"`` (deterministic: token 1 takes a pixel iff its
    logit is strictly greater), ``"sample"`` (official: noise drawn each call, seedable with
    ``model.manual_seed(seed)`` or ``model.generator = torch.Generator().manual_seed(seed)``), ``"input"``
    (uniform noise u in (0,1) passed as ``gumbel_noise`` [T,2,S]; g = -log(-log u) is computed inside in fp32).
    In "sample"/"input" the winner is chosen as the official code chooses it: the larger softmax((logit+g)/tau)
    entry, ties to token 0; the straight-through sum y_hard - y_soft + y_soft is taken as exactly y_hard.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ._pretrained import AVSBENCH_CLASSES, PretrainedCfg, voc_palette
from ._registry import pretrained_cfg, register_model, register_pretrained_cfgs
from .layers import Mlp
from .mamba import Mamba
from .pvt_v2 import B5_WIDTHS, DEMO_WIDTHS, TEST_WIDTHS, pvt_v2_b5, pvt_v2_demo, pvt_v2_test
from .resnet import B2ResNet

__all__ = ["SelM", "SelMConfig", "GUMBEL_MODES", "DAMFusionBlock", "BCSM", "CleverDecoder", "hard_assign",
           "default_cfgs"]

GUMBEL_MODES = ("none", "sample", "input")
_DIM = 256          # common width of audio tokens, projected maps, decoder tokens (official)
_AUDIO_IN = 128     # VGGish embedding width
_PVT_BACKBONES = {"pvt": (pvt_v2_b5, B5_WIDTHS), "pvt-test": (pvt_v2_test, TEST_WIDTHS),
                  "pvt-demo": (pvt_v2_demo, DEMO_WIDTHS)}
_STRIDES = (4, 8, 16, 32)


def _eager() -> bool:
    """False while tracing/exporting: value checks (data-dependent) run in eager mode only."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


# ----------------------------------------------------------------------------------------------------------------
# DAM: dual alignment module (early audio-visual fusion after every backbone stage)
# ----------------------------------------------------------------------------------------------------------------

def _conv1x1(cin: int, cout: int) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, 1)


class VisualSim(nn.Module):
    """A2V attention map: visual queries against the single audio key -> [T,1,N,1] (a softmax over one key)."""

    def __init__(self, vis_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.scale = vis_dim ** -0.5
        self.key_conv = nn.Sequential(_conv1x1(audio_dim, vis_dim))
        self.query_conv = nn.Sequential(_conv1x1(vis_dim, vis_dim), nn.InstanceNorm1d(vis_dim))
        self.query_conv2 = nn.Sequential(_conv1x1(vis_dim, vis_dim), nn.InstanceNorm1d(vis_dim))

    def forward(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        t = x.shape[0]
        query = self.query_conv2(self.query_conv(x.transpose(1, 2))).transpose(1, 2).unsqueeze(1)   # [T,1,N,C]
        key = self.key_conv(audio)                                                                  # [T,C,1]
        if mask is not None:
            key = key * mask.reshape(t, 1, 1)
        sim = (query @ key.unsqueeze(1)) * self.scale                                               # [T,1,N,1]
        if mask is not None:
            sim = sim + (1e4 * mask.reshape(t, 1, 1, 1) - 1e4)
        return sim.softmax(dim=-1)


class AudioSim(nn.Module):
    """V2A attention map: the audio query against every visual position -> [T,1,1,N] (spatial softmax)."""

    def __init__(self, vis_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.scale = vis_dim ** -0.5  # NOTE: the official code scales by the visual width here too
        self.f_key = nn.Sequential(_conv1x1(vis_dim, audio_dim), nn.InstanceNorm1d(audio_dim))
        self.f_query = nn.Sequential(_conv1x1(audio_dim, vis_dim))
        self.f_query2 = nn.Sequential(_conv1x1(vis_dim, audio_dim))

    def forward(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        t = x.shape[0]
        query = self.f_query2(self.f_query(audio)).transpose(1, 2)                                  # [T,1,A]
        key = self.f_key(x.transpose(1, 2))                                                         # [T,A,N]
        if mask is not None:
            query = query * mask.reshape(t, 1, 1)
        sim = (query.unsqueeze(1) @ key.unsqueeze(1)) * self.scale                                  # [T,1,1,N]
        if mask is not None:
            sim = sim + (1e4 * mask.reshape(t, 1, 1, 1) - 1e4)
        return sim.softmax(dim=-1)


class AVInteraction(nn.Module):
    """Both cross-attentions of DAM: visual <- audio (A2V) and audio <- visual (V2A), one head each."""

    def __init__(self, vis_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.audio_value_conv = nn.Sequential(_conv1x1(audio_dim, vis_dim))
        self.vis_value_conv = nn.Sequential(_conv1x1(vis_dim, audio_dim), nn.InstanceNorm1d(audio_dim))
        self.vis_out = nn.Sequential(_conv1x1(vis_dim, vis_dim), nn.InstanceNorm1d(vis_dim))
        self.audio_out = nn.Sequential(_conv1x1(audio_dim, audio_dim))
        self.align_vis = VisualSim(vis_dim, audio_dim)
        self.align_audio = AudioSim(vis_dim, audio_dim)
        self.vis_weight = nn.Parameter(torch.ones(1))
        self.audio_weight = nn.Parameter(torch.ones(1))

    def visual_branch(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        """A2V: [T,N,C] -> [T,N,C]. With one audio token this is InstanceNorm of a position-constant map (~0)."""
        t = x.shape[0]
        value = self.audio_value_conv(audio)                                                        # [T,C,1]
        if mask is not None:
            value = value * mask.reshape(t, 1, 1)
        sim = self.vis_weight.softmax(dim=0) * self.align_vis(x, audio, mask)                      # [T,1,N,1]
        out = (sim @ value.unsqueeze(1).transpose(2, 3)).squeeze(1)                                 # [T,N,C]
        return self.vis_out(out.transpose(1, 2)).transpose(1, 2)

    def audio_branch(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        """V2A: attention-pooled visual values -> [T,A,1]."""
        value = self.vis_value_conv(x.transpose(1, 2))                                              # [T,A,N]
        sim = self.align_audio(x, audio, mask) * self.audio_weight.softmax(dim=0)                  # [T,1,1,N]
        out = (sim @ value.unsqueeze(1).transpose(2, 3)).squeeze(1)                                 # [T,1,A]
        return self.audio_out(out.transpose(1, 2))


class AudioVisualDualFusion(nn.Module):
    """Visual residual = out_conv(GELU(conv(x)) * A2V(x)); audio residual = V2A(x)."""

    def __init__(self, vis_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(_conv1x1(vis_dim, vis_dim), nn.GELU())
        self.audio_visual_att = AVInteraction(vis_dim, audio_dim)
        self.out_conv = nn.Sequential(_conv1x1(vis_dim, vis_dim), nn.GELU())

    def forward(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        vis = self.vis_project(x.transpose(1, 2))                                                   # [T,C,N]
        weight = self.audio_visual_att.visual_branch(x, audio, mask)
        vis = self.out_conv(vis * weight.transpose(1, 2)).transpose(1, 2)
        return vis, self.audio_visual_att.audio_branch(x, audio, mask)


class DAMFusionBlock(nn.Module):
    """DAM after one backbone stage: x += tanh-gated visual residual; audio += GELU(conv(audio residual)).

    ``fold_inert()`` replaces the A2V residual, which with a single audio token is a per-channel constant
    (selm.md §3.1), by that constant; not the default.
    """

    def __init__(self, dim: int, audio_dim: int = _DIM) -> None:
        super().__init__()
        self.fusion = AudioVisualDualFusion(dim, audio_dim)
        self.gate = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False),
                                  nn.Tanh())
        self.audio_out_conv = nn.Sequential(_conv1x1(audio_dim, audio_dim), nn.GELU())
        self.register_buffer("folded_a2v", None, persistent=False)

    @torch.no_grad()
    def fold_inert(self) -> None:
        """Precompute the A2V residual gate(c) * c with c = GELU(out_conv bias) (InstanceNorm of a constant = 0)."""
        c = F.gelu(self.fusion.out_conv[0].bias)
        self.folded_a2v = self.gate(c) * c

    def forward(self, x: Tensor, audio: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """x [T,C,H,W], audio [T,256,1], mask [T] (AVSS validity) or None -> same shapes."""
        t, c, h, w = x.shape
        tokens = x.reshape(t, c, h * w).transpose(1, 2)                                            # [T,N,C]
        if self.folded_a2v is None:
            vis_res, audio_res = self.fusion(tokens, audio, mask)
            tokens = tokens + self.gate(vis_res) * vis_res
        else:
            audio_res = self.fusion.audio_visual_att.audio_branch(tokens, audio, mask)
            tokens = tokens + self.folded_a2v
        audio = audio + self.audio_out_conv(audio_res)
        return tokens.transpose(1, 2).reshape(t, c, h, w), audio


# ----------------------------------------------------------------------------------------------------------------
# BCSM: bidirectional conditioned selective mechanism (Mamba over the T frames of the clip)
# ----------------------------------------------------------------------------------------------------------------

class MambaTemporalBlock(nn.Module):
    """h = LN(h); h + Mamba(h)  (NOTE: the official residual adds the *normalised* input)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(dim)
        self.mamba_block = Mamba(d_model=dim)

    def forward(self, h: Tensor) -> Tensor:
        h = self.layernorm(h)
        return h + self.mamba_block(h)


class MambaEncoder(nn.Module):
    """A stack of ``MambaTemporalBlock`` over a [1,T,dim] sequence."""

    def __init__(self, dim: int, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MambaTemporalBlock(dim) for _ in range(depth))

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


class BCSM(nn.Module):
    """Per level s: audio gate SiLU(Linear(Mamba^3(audio))) for the maps; video gates averaged over levels
    gate the audio token: audio_out = audio + mean_s(SiLU(Linear(Mamba^3(Linear(pooled_s))))) * audio.
    """

    def __init__(self, dim: int = _DIM, levels: int = 4, depth: int = 3) -> None:
        super().__init__()
        self.vis_linear = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))
        self.video_encoder = nn.ModuleList(MambaEncoder(dim, depth) for _ in range(levels))
        self.audio_encoder = nn.ModuleList(MambaEncoder(dim, depth) for _ in range(levels))
        self.audio_gated = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.SiLU()) for _ in range(levels))
        self.video_gated = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.SiLU()) for _ in range(levels))

    def forward(self, pooled: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """pooled [T,levels,dim], audio [T,dim] -> (audio gates [T,levels,dim], gated audio [T,dim])."""
        seq = audio.unsqueeze(0)                                                                    # [1,T,dim]
        audio_gates, video_gate = [], None
        for s in range(len(self.vis_linear)):
            audio_gates.append(self.audio_gated[s](self.audio_encoder[s](seq))[0])
            video = self.video_encoder[s](self.vis_linear[s](pooled[:, s]).unsqueeze(0))
            gate = self.video_gated[s](video)[0]
            video_gate = gate if video_gate is None else video_gate + gate
        video_gate = video_gate / len(self.vis_linear)
        return torch.stack(audio_gates, dim=1), audio + video_gate * audio


# ----------------------------------------------------------------------------------------------------------------
# CLEVER: cross-level reasoning decoder
# ----------------------------------------------------------------------------------------------------------------

class CrossAttn(nn.Module):
    """Single-head cross-attention with an optional key mask (masked keys: value 0, logit -1e4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, mask: Optional[Tensor]) -> Tensor:
        """query [T,Nq,dim], key [T,S,dim], mask [T,S] or None -> [T,Nq,dim]."""
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(key)
        if mask is not None:
            k = k * mask.unsqueeze(-1)
            v = v * mask.unsqueeze(-1)
        attn = (q @ k.transpose(1, 2)) * self.scale
        if mask is not None:
            attn = attn + (1e4 * mask.unsqueeze(1) - 1e4)
        return self.proj(attn.softmax(dim=-1) @ v)


class LoadToken(nn.Module):
    """Audio into the last token: t_last += CrossAttn(LN(t_last), LN(audio)). ``norm``/``mlp`` are unused
    (present in the checkpoints only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cross_attn = CrossAttn(dim)
        self.normq = nn.LayerNorm(dim)
        self.normk = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, tokens: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        last = tokens[:, -1:]
        last = last + self.cross_attn(self.normq(last), self.normk(audio), mask)
        return torch.cat((tokens[:, :-1], last), dim=1)


class LoadLayer(nn.Module):
    """LoadToken, then tokens = Mlp(LN(tokens)) (no residual); holds the layer's learned positional embedding."""

    def __init__(self, dim: int, pe_shape: int) -> None:
        super().__init__()
        self.loadtoken = LoadToken(dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.positional_embedding = nn.Parameter(torch.randn(pe_shape * pe_shape, dim) / dim ** 0.5)

    def forward(self, tokens: Tensor, audio: Tensor, mask: Optional[Tensor]) -> Tensor:
        return self.mlp(self.norm(self.loadtoken(tokens, audio, mask)))


def _l2norm(x: Tensor, eps: float = 1e-12) -> Tensor:
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + eps)


def hard_assign(logits: Tensor, gumbel: Optional[Tensor], tau: Tensor) -> Tensor:
    """One-hot assignment of each pixel to one of two tokens: logits [T,2,hw] -> {0,1} [T,2,hw].

    Without noise, token 1 wins iff its logit is strictly greater (ties to token 0). With Gumbel noise g, as the
    official straight-through Gumbel-softmax: the larger entry of softmax((logits + g) / tau), ties to token 0.
    When gradients are recorded (training), the gradient is softmax((logits + g) / tau)'s, the value still exactly
    the one-hot one (straight-through, as the official training).
    """
    if gumbel is None:
        hit = logits[:, 1:] > logits[:, :1]
    else:
        soft = ((logits + gumbel) / tau).softmax(dim=1)
        hit = soft[:, 1:] > soft[:, :1]
    hit = hit.to(logits.dtype)
    hard = torch.cat((1.0 - hit, hit), dim=1)
    if torch.is_grad_enabled() and logits.requires_grad:
        soft = ((logits if gumbel is None else logits + gumbel) / tau).softmax(dim=1)
        hard = hard + (soft - soft.detach())
    return hard


class CGAttention(nn.Module):
    """Grouping attention: each pixel is assigned (hard) to one of the tokens by cosine similarity
    (+ Gumbel noise); each token takes the mean of its pixels' values (count + 1 in the denominator)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tau = nn.Parameter(torch.ones(1))
        self.norm_v = nn.LayerNorm(dim)
        self.norm_t = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, tokens: Tensor, vis: Tensor, pe: Tensor, gumbel: Optional[Tensor],
                hits: Optional[list] = None) -> Tensor:
        """tokens [T,2,dim], vis [T,dim,h,w], pe [h*w,dim], gumbel g [T,2,h*w] or None (deterministic); token 1's
        assignment map [T,h*w] is appended to ``hits`` when given (the training loss's auxiliary maps)."""
        x = self.norm_v(vis.flatten(2).transpose(1, 2) + pe)                                        # [T,hw,dim]
        q = _l2norm(self.q_proj(self.norm_t(tokens)))
        k = _l2norm(self.k_proj(x))
        assign = hard_assign(q @ k.transpose(1, 2), gumbel, self.tau.clamp(max=0).exp())
        if hits is not None:
            hits.append(assign[:, 1])
        attn = assign / (assign.sum(dim=-1, keepdim=True) + 1)
        new = self.proj(attn @ self.v_proj(x))
        return self.mlp(self.norm(new + tokens))


class Fusion(nn.Module):
    """Up-sample the running map to the finer map (bilinear, align_corners=True), concat, 2x (conv3x3+GN+ReLU)."""

    def __init__(self, dim: int, groups: int = 32) -> None:
        super().__init__()
        self.fusion = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.ReLU(),
                                    nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.ReLU())

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        return self.fusion(torch.cat((coarse, fine), dim=1))


class DProjector(nn.Module):
    """Mask head: ``upsamples`` x (x2 bilinear up, conv3x3+GN+ReLU), conv1x1, then a per-frame dynamic projection
    from the last token: 256 weights + 1 bias (binary) or 71 x 256 class embeddings (AVSS, no bias)."""

    def __init__(self, dim: int, upsamples: int, num_classes: int, groups: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for _ in range(upsamples):
            layers += [nn.Upsample(scale_factor=2.0, mode="bilinear"),
                       nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(groups, dim),
                                     nn.ReLU())]
        self.vis = nn.Sequential(*layers, nn.Conv2d(dim, dim, 1))
        self.audio_linear = nn.Linear(dim, dim + 1 if num_classes == 1 else num_classes * dim)

    def forward(self, vis: Tensor, token: Tensor) -> Tensor:
        """vis [T,dim,h,w], token [T,dim] -> logits [T,num_classes,H,W]."""
        y = self.vis(vis)
        t, c, h, w = y.shape
        y = y.reshape(t, c, h * w)
        params = self.audio_linear(token)
        if self.num_classes == 1:
            out = params[:, None, :c] @ y + params[:, c:, None]
        else:
            out = params.reshape(t, self.num_classes, c) @ y
        return out.reshape(t, self.num_classes, h, w)


class CleverDecoder(nn.Module):
    """Three layers (coarse to fine): Fusion with the next finer map, LoadLayer (audio), CGAttention (video);
    then the mask head on the last token and the finest fused map."""

    def __init__(self, pe_shapes: Sequence[int], mask_upsamples: int, num_classes: int, dim: int = _DIM,
                 groups: int = 32) -> None:
        super().__init__()
        self.tokens = nn.Embedding(2, dim)
        nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        self.cgattention1 = CGAttention(dim)
        self.cgattention2 = CGAttention(dim)
        self.cgattention3 = CGAttention(dim)
        self.layers = nn.ModuleList(LoadLayer(dim, p) for p in pe_shapes)
        self.fuses = nn.ModuleList(Fusion(dim, groups) for _ in pe_shapes)
        self.proj = DProjector(dim, mask_upsamples, num_classes, groups)

    def forward(self, maps: Sequence[Tensor], audio: Tensor, gumbels: Sequence[Optional[Tensor]],
                mask: Optional[Tensor], hits: Optional[list] = None) -> Tensor:
        """maps coarse->fine (4 x [T,dim,h,w]), audio [T,dim], one Gumbel g (or None) per layer, mask [T] or None;
        ``hits`` collects the three layers' assignment maps (see ``CGAttention``)."""
        t = audio.shape[0]
        tokens = self.tokens.weight.unsqueeze(0).expand(t, -1, -1)
        audio = audio.unsqueeze(1)
        key_mask = None if mask is None else mask.reshape(t, 1)
        attentions = (self.cgattention1, self.cgattention2, self.cgattention3)
        v = maps[0]
        for layer, fuse, attention, fine, g in zip(self.layers, self.fuses, attentions, maps[1:], gumbels):
            v = fuse(v, fine)
            tokens = layer(tokens, audio, key_mask)
            tokens = attention(tokens, v, layer.positional_embedding, g, hits)
        return self.proj(v, tokens[:, -1])


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelMConfig:
    """One SelM variant's architecture (its input/output contract is its ``PretrainedCfg``).

    Args:
        name: registry name.
        backbone: "r50" (B2_ResNet), "pvt" (PVT-v2-b5) or "pvt-test" (a tiny PVT-v2 for golden tests).
        setting: "s4", "ms3", "avss" (AVSBench subset the checkpoint was trained on) or "test"; "avss" takes a
            per-frame validity mask.
        resolution: input frames are resolution x resolution (fixed by the decoder's positional embeddings).
        frames: T, frames per clip = the length of BCSM's Mamba sequences.
        num_classes: 1 (binary logit; sigmoid > 0.5) or 71 (AVSS classes, 0 = background; argmax).
        mask_upsamples: number of x2 up-convolutions in the mask head (1 or 2).
        output_size: side of the output logits (the decoder's map is resized to it when it differs).
        audio_dim: width of the audio encoder's embedding.
        dim: common width of audio tokens, projected maps and decoder tokens (256).
        norm_groups: GroupNorm groups in in_proj and the decoder (32).
        temporal_depth: Mamba blocks per BCSM sequence (3).
    """

    name: str
    backbone: str
    setting: str
    resolution: int
    frames: int
    num_classes: int
    mask_upsamples: int
    output_size: int = 224
    audio_dim: int = _AUDIO_IN
    dim: int = _DIM
    norm_groups: int = 32
    temporal_depth: int = 3

    @property
    def T(self) -> int:
        """Frames per clip (alias of ``frames``)."""
        return self.frames

    @property
    def pe_shapes(self) -> tuple[int, int, int]:
        """Side of the decoder layers' maps (= their positional-embedding grids), coarse to fine."""
        return self.resolution // 16, self.resolution // 8, self.resolution // 4

    @property
    def stage_sizes(self) -> tuple[int, int, int, int]:
        """Side of the four backbone stage maps, fine to coarse."""
        return tuple(self.resolution // s for s in _STRIDES)


class SelM(nn.Module):
    """SelM for either backbone; ``forward`` = ``decode_frames(*temporal-gated encode_frames)``.

    Args:
        cfg: the variant's ``SelMConfig``.
        gumbel: "none" | "sample" | "input" (see the module docstring).
    """

    def __init__(self, cfg: SelMConfig, gumbel: str = "none") -> None:
        super().__init__()
        if gumbel not in GUMBEL_MODES:
            raise ValueError(f"gumbel must be one of {', '.join(GUMBEL_MODES)}; got {gumbel!r}")
        self.cfg = cfg
        self.gumbel = gumbel
        self.generator: Optional[torch.Generator] = None
        dim = cfg.dim
        if cfg.backbone == "r50":
            self.resnet = B2ResNet()
            self.BCSM = BCSM(dim, depth=cfg.temporal_depth)
            widths = B2ResNet.stage_channels
        elif cfg.backbone in _PVT_BACKBONES:
            build, widths = _PVT_BACKBONES[cfg.backbone]
            self.encoder_backbone = build(fusions=[DAMFusionBlock(c, dim) for c in widths])
            self.tem_att = BCSM(dim, depth=cfg.temporal_depth)
        else:
            raise ValueError(f"{cfg.name}: unknown backbone {cfg.backbone!r} (known: r50, "
                             f"{', '.join(_PVT_BACKBONES)})")
        for level in (4, 3, 2, 1):
            setattr(self, f"in_proj{level}", nn.Sequential(nn.Conv2d(widths[level - 1], dim, 1),
                                                           nn.GroupNorm(cfg.norm_groups, dim)))
        if cfg.backbone == "r50":
            for level, c in enumerate(widths, start=1):
                setattr(self, f"DAM_Fusion{level}", DAMFusionBlock(c, dim))
        self.decoder = CleverDecoder(cfg.pe_shapes, cfg.mask_upsamples, cfg.num_classes, dim, cfg.norm_groups)
        self.audio_proj = nn.Linear(cfg.audio_dim, dim)
        self.audio_norm = nn.LayerNorm(dim)

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def _backbone(self) -> nn.Module:
        return self.resnet if self.cfg.backbone == "r50" else self.encoder_backbone

    @property
    def _bcsm(self) -> BCSM:
        return self.BCSM if self.cfg.backbone == "r50" else self.tem_att

    @property
    def _fusions(self) -> list[DAMFusionBlock]:
        owner = self if self.cfg.backbone == "r50" else self.encoder_backbone
        return [getattr(owner, f"DAM_Fusion{i}") for i in range(1, 5)]

    def fold_inert(self) -> "SelM":
        """Replace each DAM's A2V residual by its constant value (selm.md §3.1); see ``DAMFusionBlock``."""
        for dam in self._fusions:
            dam.fold_inert()
        return self

    # -- Gumbel noise ------------------------------------------------------------------------------------------
    def gumbel_noise_shape(self, frames: int) -> tuple[int, int, int]:
        """Shape [T,2,S] of ``gumbel_noise``: S = the three decoder layers' h*w, concatenated in layer order."""
        return frames, 2, sum(p * p for p in self.cfg.pe_shapes)

    def manual_seed(self, seed: int) -> "SelM":
        """Seed the noise of ``gumbel="sample"`` (a private generator; without it the global RNG is used)."""
        self.generator = torch.Generator().manual_seed(seed)
        return self

    def sample_gumbel_noise(self, frames: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Uniform noise u for ``gumbel_noise``, drawn as torch's Gumbel(0, 1) draws it: U[tiny, 1 - eps)."""
        finfo = torch.finfo(torch.float32)
        u = torch.rand(self.gumbel_noise_shape(frames), generator=generator, device=self.audio_proj.weight.device)
        return u * (1.0 - finfo.eps - finfo.tiny) + finfo.tiny

    # -- input checks ------------------------------------------------------------------------------------------
    def _check(self, name: str, t: object, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor {list(shape)} ({what}), got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)} ({what}) for {self.cfg.name}, "
                             f"got {list(t.shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name}: expected float32, got {t.dtype} (convert with .float())")

    def _check_frames(self, frames: object, audio_embed: object) -> int:
        r = self.cfg.resolution
        if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[0] < 1:
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: expected [T, 3, {r}, {r}] (T >= 1), got {got}")
        t = frames.shape[0]
        self._check("frames", frames, (t, 3, r, r),
                    f"ImageNet-normalised RGB at {r}x{r}: resize the frames to {r}x{r}; the decoder's positional "
                    f"embeddings fix the resolution")
        self._check("audio_embed", audio_embed, (t, self.cfg.audio_dim),
                    f"one {self.cfg.audio_dim}-d VGGish embedding per frame")
        return t

    def _mask(self, valid: Optional[Tensor], t: int) -> Optional[Tensor]:
        """AVSS per-frame validity [T] -> float mask, or None (all valid)."""
        if valid is None:
            return None
        if self.cfg.setting != "avss":
            raise ValueError(f"valid: {self.cfg.name} takes no per-frame validity mask (only the AVSS variants "
                             f"do); pass valid=None")
        if not isinstance(valid, Tensor) or tuple(valid.shape) != (t,) or \
                valid.dtype not in (torch.bool, torch.float32):
            got = f"{list(valid.shape)} {valid.dtype}" if isinstance(valid, Tensor) else type(valid).__name__
            raise ValueError(f"valid: expected a bool or float32 tensor [{t}] (1 = real frame, 0 = padding), "
                             f"got {got}")
        mask = valid.to(torch.float32)
        if _eager() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("valid: values must be 0 or 1")
        return mask

    def _check_noise(self, noise: Optional[Tensor], t: int) -> None:
        """``gumbel_noise`` must be given exactly in mode "input": float32 [t,2,S], values in (0, 1)."""
        shape = self.gumbel_noise_shape(t)
        if self.gumbel != "input":
            if noise is not None:
                got = list(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
                raise ValueError(f"gumbel_noise: this model was built with gumbel={self.gumbel!r}, which takes no "
                                 f"noise input (got {got}); build it with gumbel='input' or pass gumbel_noise=None")
            return
        if noise is None:
            raise ValueError(f"gumbel_noise: required with gumbel='input': uniform noise in (0, 1), float32, "
                             f"shape {list(shape)} (model.gumbel_noise_shape({t})); got None")
        self._check("gumbel_noise", noise, shape, "uniform noise in (0, 1), one value per token and decoder pixel")
        if _eager() and not bool(((noise > 0) & (noise < 1)).all()):
            raise ValueError("gumbel_noise: values must lie strictly between 0 and 1 (uniform noise u; the model "
                             "computes g = -log(-log u))")

    def _gumbels(self, noise: Optional[Tensor], t: int) -> list[Optional[Tensor]]:
        """Per-layer Gumbel g = -log(-log u) in fp32 ([T,2,h*w] each), or Nones in mode "none"."""
        self._check_noise(noise, t)
        if self.gumbel == "none":
            return [None, None, None]
        if self.gumbel == "sample":
            noise = self.sample_gumbel_noise(t, self.generator)
        g = -torch.log(-torch.log(noise))
        return list(torch.split(g, [p * p for p in self.cfg.pe_shapes], dim=2))

    # -- the three streaming stages ----------------------------------------------------------------------------
    def encode_frames(self, frames: Tensor, audio_embed: Tensor, *, valid: Optional[Tensor] = None
                      ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
        """Per-frame encoder: backbone stages with DAM fusion, in_proj. No cross-frame op; any T >= 1.

        Returns (maps: 4 x [T,256,R/4..R/32] fine to coarse, pooled [T,4,256], audio [T,256] post-DAM).
        """
        t = self._check_frames(frames, audio_embed)
        mask = self._mask(valid, t)
        audio = self.audio_norm(self.audio_proj(audio_embed))
        if mask is not None:
            frames = frames * mask.reshape(t, 1, 1, 1)
            audio = audio * mask.reshape(t, 1)
        audio = audio.unsqueeze(2)                                                                  # [T,256,1]
        h, feats = frames, []
        for i, dam in enumerate(self._fusions):
            h, audio = dam(self._backbone.forward_stage(i, h), audio, mask)
            feats.append(h)
        if mask is not None:
            feats = [f * mask.reshape(t, 1, 1, 1) for f in feats]
        maps = tuple(getattr(self, f"in_proj{s}")(f) for s, f in enumerate(feats, start=1))
        pooled = torch.stack([m.mean(dim=(2, 3)) for m in maps], dim=1)
        return maps, pooled, audio.reshape(t, self.cfg.dim)

    def temporal(self, pooled: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """BCSM over the window: causal in T, so a window of the first t <= T frames gives the first t results.

        pooled [t,4,256], audio [t,256] -> (gates [t,4,256], audio_out [t,256]).
        """
        dim = self.cfg.dim
        if not isinstance(pooled, Tensor) or pooled.dim() != 3 or not 1 <= pooled.shape[0] <= self.cfg.frames:
            got = list(pooled.shape) if isinstance(pooled, Tensor) else type(pooled).__name__
            raise ValueError(f"pooled: expected [t, 4, {dim}] with 1 <= t <= {self.cfg.frames}, got {got}")
        t = pooled.shape[0]
        self._check("pooled", pooled, (t, 4, dim), "per-level pooled maps from encode_frames")
        self._check("audio", audio, (t, dim), "post-DAM audio tokens from encode_frames")
        return self._bcsm(pooled, audio)

    def decode_frames(self, maps: Sequence[Tensor], gates: Tensor, audio_out: Tensor,
                      gumbel_noise: Optional[Tensor] = None, *, valid: Optional[Tensor] = None,
                      hits: Optional[list] = None) -> Tensor:
        """Per-frame decoder on any T' >= 1 frames: gate the maps, CLEVER, resize to 224.

        maps 4 x [T',256,h_s,w_s] (encode_frames), gates [T',4,256] and audio_out [T',256] (temporal) ->
        logits [T',num_classes,224,224]. ``hits`` (a list) receives the decoder's three assignment maps [T',h*w]
        (coarse to fine), which the training loss supervises.
        """
        if not isinstance(audio_out, Tensor) or audio_out.dim() != 2 or audio_out.shape[0] < 1:
            got = list(audio_out.shape) if isinstance(audio_out, Tensor) else type(audio_out).__name__
            raise ValueError(f"audio_out: expected [T', {self.cfg.dim}], got {got}")
        t, dim = audio_out.shape[0], self.cfg.dim
        self._check("audio_out", audio_out, (t, dim), "gated audio tokens from temporal")
        self._check("gates", gates, (t, 4, dim), "per-level audio gates from temporal")
        if len(maps) != 4:
            raise ValueError(f"maps: expected the 4 maps from encode_frames, got {len(maps)}")
        for s, (m, side) in enumerate(zip(maps, self.cfg.stage_sizes), start=1):
            self._check(f"maps[{s - 1}]", m, (t, dim, side, side), f"level-{s} map from encode_frames")
        mask = self._mask(valid, t)
        gumbels = self._gumbels(gumbel_noise, t)
        gated = [m + gates[:, s, :, None, None] * m for s, m in enumerate(maps)]
        logits = self.decoder(gated[::-1], audio_out, gumbels, mask, hits)
        size = self.cfg.output_size
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
        if mask is not None:
            logits = logits * mask.reshape(t, 1, 1, 1)
        return logits

    def forward(self, frames: Tensor, audio_embed: Tensor, valid: Optional[Tensor] = None,
                gumbel_noise: Optional[Tensor] = None) -> Tensor:
        """One clip: frames [T,3,R,R] (ImageNet-normalised RGB), audio_embed [T,128] (VGGish), valid [T] (AVSS,
        optional), gumbel_noise [T,2,S] (gumbel="input" only) -> logits [T,num_classes,224,224]."""
        cfg = self.cfg
        if isinstance(frames, Tensor) and frames.dim() == 4 and frames.shape[0] != cfg.frames:
            raise ValueError(f"frames: {cfg.name} takes clips of T={cfg.frames} frames "
                             f"[{cfg.frames}, 3, {cfg.resolution}, {cfg.resolution}], got {list(frames.shape)}; "
                             f"for fewer frames use encode_frames/temporal/decode_frames")
        self._check_noise(gumbel_noise, cfg.frames)
        maps, pooled, audio = self.encode_frames(frames, audio_embed, valid=valid)
        gates, audio_out = self.temporal(pooled, audio)
        return self.decode_frames(maps, gates, audio_out, gumbel_noise, valid=valid)


# ----------------------------------------------------------------------------------------------------------------
# Configurations and registrations
# ----------------------------------------------------------------------------------------------------------------

def _cfg(name: str, setting: str, backbone: str, **kwargs) -> PretrainedCfg:
    """A SelM entry: the official release's provenance, overridden by ``kwargs``."""
    return PretrainedCfg(name=name, family="selm", setting=setting, backbone=backbone, license="Apache-2.0",
                         origin_url="https://github.com/Cyyzpoi/SelM", paper="doi:10.1145/3664647.3680926",
                         **kwargs)


_DRIVE = "https://drive.google.com/file/d/"
_AVSS = dict(frames_per_clip=10, output_kind="semantic", num_classes=71, class_names=AVSBENCH_CLASSES,
             palette=voc_palette(71), threshold=None)
default_cfgs = register_pretrained_cfgs([
    _cfg("selm-s4-r50", "s4", "r50", file="S4_R50.pth", url=_DRIVE + "1kJI00umTGOa05HxDdrHYVPozLn32cc_o"),
    _cfg("selm-s4-pvt", "s4", "pvt", input_size=448, file="S4_PVT.pth",
         url=_DRIVE + "1WFcfB5cawzqLSxUJH7yP3xL2JN0ZX27V"),
    _cfg("selm-ms3-r50", "ms3", "r50", input_size=448, file="MS3_R50.pth",
         url=_DRIVE + "19YHJOec_XbJpzAe2JJs6Omm71dmRZHNr"),
    _cfg("selm-ms3-pvt", "ms3", "pvt", input_size=448, file="MS3_PVT.pth",
         url=_DRIVE + "1xtb7GRciK29RJMVHgZRhDSOhBJT-y93Y"),
    _cfg("selm-avss-r50", "avss", "r50", **_AVSS, file="AVSS_R50.pth",
         url=_DRIVE + "1qr2_JotdX1P0EUh7WUHsBkydyQezmd7R"),
    _cfg("selm-avss-pvt", "avss", "pvt", **_AVSS, file="AVSS_PVT.pth",
         url=_DRIVE + "1b5x7I2JJJLtuU8KPCFT1HOagiPjk2yZE"),
    # Tiny random-weight variant for golden tests and fast export tests: no checkpoint exists.
    PretrainedCfg(name="selm-test", family="selm", setting="test", backbone="pvt-test", audio_encoder="vggish-test",
                  input_size=64, output_size=64),
    # The demo variant: SelM's modules at width 32 on a light PVT-v2 at 128 px, with a small audio encoder trained
    # with it (vggish-demo); trained from scratch on avs-synth S4 by python -m export.train_demo, shipped weights.
    PretrainedCfg(name="selm-s4-demo", family="selm", setting="s4", backbone="pvt-demo", audio_encoder="vggish-demo",
                  input_size=128, output_size=224, bundled="selm-s4-demo.pth", license="Apache-2.0"),
])

_OPTIONS = ("gumbel",) + tuple(f.name for f in fields(SelMConfig) if f.name != "name")


def _create_selm(name: str, **kwargs) -> SelM:
    """Build variant ``name``: its pretrained config fixes the input/output contract, ``kwargs`` the rest."""
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; SelM takes {', '.join(_OPTIONS)}")
    pcfg = pretrained_cfg(name)
    args = dict(backbone=pcfg.backbone, setting=pcfg.setting, resolution=pcfg.input_size,
                frames=pcfg.frames_per_clip, num_classes=pcfg.num_classes, output_size=pcfg.output_size)
    args.update(kwargs)
    gumbel = args.pop("gumbel", "none")
    return SelM(SelMConfig(name=name, **args), gumbel=gumbel)


@register_model("selm-s4-r50")
def selm_s4_r50(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2)
    return _create_selm("selm-s4-r50", **dict(model_args, **kwargs))


@register_model("selm-s4-pvt")
def selm_s4_pvt(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=1)
    return _create_selm("selm-s4-pvt", **dict(model_args, **kwargs))


@register_model("selm-ms3-r50")
def selm_ms3_r50(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=1)
    return _create_selm("selm-ms3-r50", **dict(model_args, **kwargs))


@register_model("selm-ms3-pvt")
def selm_ms3_pvt(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2)
    return _create_selm("selm-ms3-pvt", **dict(model_args, **kwargs))


@register_model("selm-avss-r50")
def selm_avss_r50(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2)
    return _create_selm("selm-avss-r50", **dict(model_args, **kwargs))


@register_model("selm-avss-pvt")
def selm_avss_pvt(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2)
    return _create_selm("selm-avss-pvt", **dict(model_args, **kwargs))


@register_model("selm-test")
def selm_test(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2, dim=16, norm_groups=8, temporal_depth=1)
    return _create_selm("selm-test", **dict(model_args, **kwargs))


@register_model("selm-s4-demo")
def selm_s4_demo(**kwargs) -> SelM:
    model_args = dict(mask_upsamples=2, dim=32, norm_groups=8, temporal_depth=1)
    return _create_selm("selm-s4-demo", **dict(model_args, **kwargs))
