"""SDAVS: Selective Noise Suppression and Discriminative Mutual Interaction for Robust Audio-Visual Segmentation.

Paper: K. Peng, Y. Shen, M. Zhang, L. Liu, Y. Han, W. Ji, J. Li, Y. Piao, H. Lu, IEEE TMM (2026); authors'
repository https://github.com/happylife-pk/SDAVS (README and figure only: no code, no weights). Rebuilt here from
``shared/specs/sdavs.md`` (paper text, Eq. 1-9, Fig. 2, Table X); nothing is copied. Every choice the paper leaves
open is one field of :class:`SDAVSConfig` (defaults below, reasons in README "SDAVS"); no checkpoint exists, so
parameter names are ours.

Data path (one clip of T frames, C = ``dim``)::

    encode_frames (per frame): backbone (Swin-B / PVT-v2) -> 4 maps, fine to coarse;
                               VGGish conv map [T,C_a,6,4] -> 1x1 conv -> Audio Attention -> audio [T,C,6,4]
    fuse (mixes frames):       4 stages, deep to shallow: SNRP (audio-driven channel + spatial selectors) ->
                               DAMF (bidirectional cross-attention on STC tokens, residual multiplication) ->
                               direct connection into the next stage, skip connection to the stride-4 sum ->
                               MLP + FC -> mask logits [T,classes,R/4,R/4]
    decode (per frame):        bilinear resize to ``output_size``

Only DAMF's query STC (a depthwise 3x3x3 conv) mixes frames. It is causal here (frame t sees t-2..t), so a
window of the first k frames gives exactly the first k rows of the full clip: the streaming split runs the
encoders once per frame and ``fuse`` over the window of cached encoder outputs (see ``export.onnx_export``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ._pretrained import AVSBENCH_CLASSES, PretrainedCfg, voc_palette
from ._registry import pretrained_cfg, register_model, register_pretrained_cfgs, variant_config
from .factory import create_model
from .pvt_v2 import B5_WIDTHS, DEMO_WIDTHS, pvt_v2_b5, pvt_v2_demo
from .swin import SWIN_B_WIDTHS, SWIN_TEST_WIDTHS, swin_base_384, swin_test
from .vggish import VGGish

__all__ = ["SDAVS", "SDAVSConfig", "SNRP", "DAMF", "STC", "AudioAttention", "VGGishMap", "budget_report",
           "PAPER_BUDGET", "default_cfgs"]

AUDIO_MAP = (6, 4)          # VGGish's conv map after four 2x2 pools of a 96 x 64 log-mel example
PAPER_BUDGET = {            # Table X (Swin-B ablation model): params (M) and "FLOPs" (G) each component adds; STC's
    "SNRP": (2.62, 0.05), "DAMF": (2.44, 20.6), "STC": (0.2, None), "total": (103.2, 300.9)}   # removal costs +125.8 G


def _eager() -> bool:
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False) to ``size``; a no-op at that size."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                      align_corners=False)


def _conv_gn_relu(cin: int, cout: int, groups: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.GroupNorm(groups, cout), nn.ReLU())


# ----------------------------------------------------------------------------------------------------------------
# Audio: the VGGish conv map and "Audio Attention"
# ----------------------------------------------------------------------------------------------------------------

class VGGishMap(VGGish):
    """VGGish whose output is its conv map ``[N, C_a, 6, 4]`` (before the FC layers), the 2-D audio map F_a that
    SNRP upsamples. The FC layers stay so that VGGish checkpoints load unchanged; they are not run."""

    def forward(self, logmel: Tensor) -> Tensor:
        if logmel.dim() != 4 or tuple(logmel.shape[1:]) != self.INPUT_SHAPE:
            raise ValueError(f"VGGish expects log-mel examples [N, 1, 96, 64]; got {list(logmel.shape)}")
        return self.features(logmel)


class Attention(nn.Module):
    """Standard multi-head attention: W_q, W_k, W_v, softmax(QK^T / sqrt(d)) V, W_o."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """query [B,Nq,C], key/value [B,Nk,C] -> [B,Nq,C]."""
        b, nq, c = query.shape
        nk, h = key.shape[1], self.heads
        q = self.q(query).reshape(b, nq, h, c // h).transpose(1, 2)
        k = self.k(key).reshape(b, nk, h, c // h).transpose(1, 2)
        v = self.v(value).reshape(b, nk, h, c // h).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(b, nq, c))


class AudioAttention(nn.Module):
    """Fig. 2's "Audio Attention": one post-norm self-attention layer over the 24 time-frequency positions of the
    projected VGGish map (learned position embedding), keeping the 2-D map: [N,C,6,4] -> [N,C,6,4]."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(AUDIO_MAP[0] * AUDIO_MAP[1], dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.attn = Attention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.pos
        tokens = self.norm(tokens + self.attn(tokens, tokens, tokens))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------------------------------
# SNRP: selective noise-resilient processor (Eq. 1-3)
# ----------------------------------------------------------------------------------------------------------------

class SNRP(nn.Module):
    """Audio-driven selectors for one stage's visual map.

    F'_a = Up(Conv3x3(F_a)) (the conv runs on the 6x4 audio map, then the map is resized to the stage: Table X
    gives SNRP 2.6 M parameters but only 0.05 GFLOPs, so its conv cannot run at stage resolution);
    channel selector: F~_v = F_v * sigmoid(MLP(GAP(F'_a))); spatial selector: F'_v = F~_v * sigmoid(Up(Conv7x7(
    Conv3x3(F_a)) -> 1 channel)). Returns (F'_v, F'_a at the stage size, the refined 6x4 map for the next stage).
    """

    def __init__(self, dim: int, reduction: int, spatial_kernel: int) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.audio_conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.channel = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Sigmoid())
        self.spatial = nn.Conv2d(dim, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, visual: Tensor, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """visual [N,C,h,w], audio [N,C,6,4] -> (selected visual [N,C,h,w], audio map [N,C,h,w], audio [N,C,6,4])."""
        size = visual.shape[-2:]
        audio = self.audio_conv(audio)
        audio_map = _up(audio, size)
        gate_c = self.channel(audio_map.mean(dim=(2, 3)))
        gate_s = torch.sigmoid(_up(self.spatial(audio), size))
        return visual * gate_c[:, :, None, None] * gate_s, audio_map, audio


# ----------------------------------------------------------------------------------------------------------------
# DAMF: discriminative audio-visual mutual fusion (Eq. 4-7)
# ----------------------------------------------------------------------------------------------------------------

class CAR(nn.Module):
    """Channel-wise recalibration (Eq. 6): X * sigmoid(W2 ReLU(W1 GAP(X))), per frame."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class STC(nn.Module):
    """Spatio-temporal context (Eq. 5): LN(CAR(depthwise Conv3d(F))) -> tokens [N, h*w, C].

    ``frames = 3`` is the query's (3,3,3) kernel, causal in time (frame t sees t-2..t; zero frames before the
    clip), its two past taps starting at zero; ``frames = 1`` the keys'/values' (1,3,3). ``pool`` > 1 first
    averages pool x pool pixels (keys/values: K/V tokens at most ``kv_size`` squared per frame).
    """

    def __init__(self, dim: int, frames: int, reduction: int) -> None:
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv3d(dim, dim, (frames, 3, 3), padding=(0, 1, 1), groups=dim)
        with torch.no_grad():
            self.conv.weight[:, :, :-1].zero_()
        self.car = CAR(dim, reduction)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, clips: int, pool: int = 1) -> Tensor:
        """x [clips*T, C, h, w] (frames of each clip consecutive) -> tokens [clips*T, h*w/pool^2, C]."""
        if pool > 1:
            x = F.avg_pool2d(x, pool)
        n, c, h, w = x.shape
        y = x.reshape(clips, n // clips, c, h, w).transpose(1, 2)                   # [B,C,T,h,w]
        if self.frames > 1:
            y = F.pad(y, (0, 0, 0, 0, self.frames - 1, 0))
        y = self.conv(y).transpose(1, 2).reshape(n, c, h, w)
        return self.norm(self.car(y).flatten(2).transpose(1, 2))


class DAMF(nn.Module):
    """Bidirectional cross-modal attention with residual multiplication (Eq. 4, 7), per frame:

    F_a->v = Attn(STC_q(F'_v), STC_k(F'_a), STC_v(F'_a)) (video queries, audio keys/values),
    F_v->a = Attn(STC_q(F'_a), STC_k(F'_v), STC_v(F'_v)); output F_a->v * F'_a + F_v->a * F'_v.
    """

    def __init__(self, dim: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.q_video, self.k_audio, self.v_audio = STC(dim, 3, reduction), STC(dim, 1, reduction), STC(dim, 1,
                                                                                                       reduction)
        self.q_audio, self.k_video, self.v_video = STC(dim, 3, reduction), STC(dim, 1, reduction), STC(dim, 1,
                                                                                                       reduction)
        self.audio_to_video = Attention(dim, heads)
        self.video_to_audio = Attention(dim, heads)

    def forward(self, visual: Tensor, audio: Tensor, clips: int, kv_size: int) -> Tensor:
        """visual, audio [clips*T, C, h, w] -> fused [clips*T, C, h, w]."""
        n, c, h, w = visual.shape
        pool = max(h // kv_size, 1)
        a2v = self.audio_to_video(self.q_video(visual, clips), self.k_audio(audio, clips, pool),
                                  self.v_audio(audio, clips, pool))
        v2a = self.video_to_audio(self.q_audio(audio, clips), self.k_video(visual, clips, pool),
                                  self.v_video(visual, clips, pool))
        a2v = a2v.transpose(1, 2).reshape(n, c, h, w)
        v2a = v2a.transpose(1, 2).reshape(n, c, h, w)
        return a2v * audio + v2a * visual


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SDAVSConfig:
    """One SDAVS variant's architecture; every field the paper leaves open is decided here (README "SDAVS").

    Args:
        name: registry name.
        backbone: ``swinb`` (Swin-B, window 12), ``pvt`` (PVT-v2-b5), ``pvt-demo`` or ``swin-test``.
        setting: ``s4``, ``ms3``, ``avss`` or ``test``.
        resolution: input side (384 as the paper).
        frames: T, frames per clip.
        num_classes: 1 (binary) or 71 (AVSS).
        output_size: side of the returned logits (bilinear from stride 4).
        audio_channels: channels of the audio encoder's conv map (512 for VGGish).
        dim: decoder width C_d (256).
        heads: attention heads in DAMF and Audio Attention (8).
        kv_size: DAMF keys/values are average-pooled to at most kv_size x kv_size tokens per frame (12).
        car_reduction: CAR's squeeze ratio (32).
        selector_reduction: SNRP channel-selector MLP ratio (4).
        spatial_kernel: SNRP spatial-assessment conv kernel (7).
        norm_groups: GroupNorm groups of the projections and decoder convs (32).
    """

    name: str
    backbone: str
    setting: str
    resolution: int = 384
    frames: int = 5
    num_classes: int = 1
    output_size: int = 224
    audio_channels: int = 512
    dim: int = 256
    heads: int = 8
    kv_size: int = 12
    car_reduction: int = 32
    selector_reduction: int = 4
    spatial_kernel: int = 7
    norm_groups: int = 32

    @property
    def stage_sizes(self) -> tuple[int, int, int, int]:
        """Side of the four backbone maps, fine to coarse (strides 4..32)."""
        return tuple(self.resolution // s for s in (4, 8, 16, 32))


_BACKBONES = {"swinb": (swin_base_384, SWIN_B_WIDTHS), "swin-test": (swin_test, SWIN_TEST_WIDTHS),
              "pvt": (pvt_v2_b5, B5_WIDTHS), "pvt-demo": (pvt_v2_demo, DEMO_WIDTHS)}


class SDAVS(nn.Module):
    """SDAVS for any backbone; ``forward`` = ``decode(fuse(*encode_frames(...)))``."""

    def __init__(self, cfg: SDAVSConfig) -> None:
        super().__init__()
        if cfg.backbone not in _BACKBONES:
            raise ValueError(f"{cfg.name}: unknown backbone {cfg.backbone!r} (known: {', '.join(_BACKBONES)})")
        self.cfg = cfg
        build, widths = _BACKBONES[cfg.backbone]
        self.backbone = build(cfg.resolution) if cfg.backbone.startswith("swin") else build()
        d, g = cfg.dim, cfg.norm_groups
        self.audio_proj = nn.Conv2d(cfg.audio_channels, d, 1)
        self.audio_attention = AudioAttention(d, cfg.heads)
        # Stages run deep to shallow: index 0 is the stride-32 map.
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(g, d)) for c in widths[::-1])
        self.snrp = nn.ModuleList(SNRP(d, cfg.selector_reduction, cfg.spatial_kernel) for _ in range(4))
        self.damf = nn.ModuleList(DAMF(d, cfg.heads, cfg.car_reduction) for _ in range(4))
        self.direct = nn.ModuleList(_conv_gn_relu(d, d, g) for _ in range(3))
        self.skip = nn.ModuleList(_conv_gn_relu(d, d, g, k=1) for _ in range(4))
        self.mlp = nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU())
        self.fc = nn.Conv2d(d, cfg.num_classes, 1)

    # -- the three streaming stages ----------------------------------------------------------------------------
    def encode_frames(self, frames: Tensor, audio_map: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per frame, any N: frames [N,3,R,R] (ImageNet-normalised RGB), audio_map [N,C_a,6,4] (``VGGishMap``)
        -> (4 backbone maps fine to coarse [N,C_i,R/4..R/32], audio [N,dim,6,4])."""
        self._check_inputs(frames, audio_map)
        if self.cfg.backbone.startswith("swin"):
            feats = self.backbone.forward_features(frames)
        else:
            feats, h = [], frames
            for i in range(4):
                h = self.backbone.forward_stage(i, h)
                feats.append(h)
        return feats, self.audio_attention(self.audio_proj(audio_map))

    def fuse(self, feats: Sequence[Tensor], audio: Tensor, clips: int = 1) -> Tensor:
        """The fusion decoder over whole clips (``clips`` x T' consecutive frames, T' <= T; causal in time):
        feats 4 x [N,C_i,...] fine to coarse, audio [N,dim,6,4] -> mask logits [N,num_classes,R/4,R/4]."""
        n = audio.shape[0]
        if _eager() and (n % clips or n // clips > self.cfg.frames):
            raise ValueError(f"fuse: {n} frames are not {clips} clips of at most {self.cfg.frames} frames")
        finest = feats[0].shape[-2:]
        fused, total = None, None
        for j, (feat, proj, snrp, damf) in enumerate(zip(feats[::-1], self.proj, self.snrp, self.damf)):
            visual = proj(feat)
            if fused is not None:                                   # direct connection from the deeper stage
                visual = self.direct[j - 1](_up(fused, visual.shape[-2:]) + visual)
            visual, audio_map, audio = snrp(visual, audio)
            fused = damf(visual, audio_map, clips, self.cfg.kv_size)
            skip = _up(self.skip[j](fused), finest)                 # skip connection to stride 4
            total = skip if total is None else total + skip
        return self.fc(self.mlp(total))

    def decode(self, mask_logits: Tensor) -> Tensor:
        """Per frame: [N,num_classes,R/4,R/4] -> [N,num_classes,output_size,output_size] (bilinear)."""
        size = self.cfg.output_size
        return _up(mask_logits, (size, size))

    def forward(self, frames: Tensor, audio_map: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """One clip: frames [T,3,R,R], audio_map [T,C_a,6,4], valid [T] (AVSS padding, optional) -> logits
        [T,num_classes,output_size,output_size]."""
        if valid is not None:
            keep = valid.to(frames.dtype)
            frames, audio_map = frames * keep[:, None, None, None], audio_map * keep[:, None, None, None]
        logits = self.forward_clips(frames, audio_map, clips=1)
        return logits if valid is None else logits * keep[:, None, None, None]

    def forward_clips(self, frames: Tensor, audio_map: Tensor, clips: int) -> Tensor:
        """``clips`` clips of equal length, frames consecutive: [clips*T',...] -> logits [clips*T',...]."""
        feats, audio = self.encode_frames(frames, audio_map)
        return self.decode(self.fuse(feats, audio, clips))

    def _check_inputs(self, frames: Tensor, audio_map: Tensor) -> None:
        r, ca = self.cfg.resolution, self.cfg.audio_channels
        if not isinstance(frames, Tensor) or frames.dim() != 4 or tuple(frames.shape[1:]) != (3, r, r):
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: expected [N, 3, {r}, {r}] for {self.cfg.name}, got {got}")
        if not isinstance(audio_map, Tensor) or tuple(audio_map.shape) != (frames.shape[0], ca, *AUDIO_MAP):
            got = list(audio_map.shape) if isinstance(audio_map, Tensor) else type(audio_map).__name__
            raise ValueError(f"audio_map: expected [{frames.shape[0]}, {ca}, 6, 4] (the audio encoder's conv map, "
                             f"VGGishMap), got {got}")


# ----------------------------------------------------------------------------------------------------------------
# Budget: parameters and MACs per component, next to the paper's Table X
# ----------------------------------------------------------------------------------------------------------------

def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def budget_report(name: str) -> dict[str, dict[str, float]]:
    """Parameters (M) and GMACs of one clip (T frames, batch 1) per component of variant ``name``, counted on the
    meta device (nothing is computed). STC is part of DAMF; "decoder" = projections, direct/skip convs, head."""
    cfg = pretrained_cfg(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name)
        t, r = cfg.frames_per_clip, cfg.input_size
        frames = torch.zeros(t, 3, r, r)
        audio_map = torch.zeros(t, model.cfg.audio_channels, *AUDIO_MAP)
        counter = FlopCounterMode(display=False)
        with counter:
            model(frames, audio_map)
    by_module = counter.get_flop_counts()

    def gmacs(prefixes) -> float:
        return sum(sum(by_module.get(f"SDAVS.{p}", {}).values()) for p in prefixes) / 2e9

    stages = range(4)
    groups = {      # the modules called by __call__ (FlopCounterMode attributes MACs to those)
        "audio attention": ["audio_proj", "audio_attention"],
        "SNRP": [f"snrp.{i}" for i in stages],
        "DAMF": [f"damf.{i}" for i in stages],
        "STC": [f"damf.{i}.{s}" for i in stages for s in ("q_video", "k_audio", "v_audio", "q_audio", "k_video",
                                                          "v_video")],
        "decoder": [f"proj.{i}" for i in stages] + [f"direct.{i}" for i in range(3)]
                   + [f"skip.{i}" for i in stages] + ["mlp", "fc"],
    }
    named = dict(model.named_modules())
    total = sum(by_module.get("Global", {}).values()) / 2e9
    report = {"backbone": {"params_M": _params([model.backbone]) / 1e6, "GMACs": 0.0}}
    for group, prefixes in groups.items():
        report[group] = {"params_M": _params(named[p] for p in prefixes) / 1e6, "GMACs": gmacs(prefixes)}
    report["backbone"]["GMACs"] = total - sum(v["GMACs"] for k, v in report.items() if k != "STC")
    report["total"] = {"params_M": _params([model]) / 1e6, "GMACs": total}
    return report


# ----------------------------------------------------------------------------------------------------------------
# Configurations and registrations
# ----------------------------------------------------------------------------------------------------------------

_ORIGIN = "https://github.com/happylife-pk/SDAVS"
_PAPER = "Peng et al., Selective Noise Suppression and Discriminative Mutual Interaction for Robust AVS, IEEE TMM 2026"


def _cfg(name: str, setting: str, backbone: str, **kwargs) -> PretrainedCfg:
    """An SDAVS entry: 384 px, VGGish conv map, logits at 224 (the AVSBench masks); no released weights."""
    args = dict(input_size=384, output_size=224, audio_encoder="vggish-map", origin_url=_ORIGIN, paper=_PAPER)
    args.update(kwargs)
    return PretrainedCfg(name=name, family="sdavs", setting=setting, backbone=backbone, **args)


_AVSS = dict(frames_per_clip=10, output_kind="semantic", num_classes=71, class_names=AVSBENCH_CLASSES,
             palette=voc_palette(71), threshold=None)
_AUDIO_MAP = dict(family="vggish", task="audio-encoder", audio_encoder=None, output_kind="embedding",
                  num_classes=512, class_names=(), palette=(), threshold=None)
default_cfgs = register_pretrained_cfgs([
    *(_cfg(f"sdavs-{s}-{b}", s, b, **(_AVSS if s == "avss" else {}))
      for s in ("s4", "ms3", "avss") for b in ("swinb", "pvt")),
    # Demo: SelM-demo's light PVT-v2 at 128 px, width 32, the frozen vggish-demo conv map; trained on avs-synth.
    _cfg("sdavs-s4-demo", "s4", "pvt-demo", input_size=128, audio_encoder="vggish-demo-map",
         bundled="sdavs-s4-demo.pth", license="Apache-2.0"),
    # Tiny random-weight variant (tiny Swin at 64 px) for fast module, export and training tests.
    _cfg("sdavs-test", "test", "swin-test", input_size=64, output_size=64, audio_encoder="vggish-test-map"),
    # VGGish conv-map audio encoders: the same weights files as vggish / vggish-demo / vggish-test.
    PretrainedCfg(name="vggish-map", **_AUDIO_MAP, file="vggish-10086976.pth",
                  url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
                  license="Apache-2.0", origin_url="https://github.com/harritaylor/torchvggish"),
    PretrainedCfg(name="vggish-demo-map", **_AUDIO_MAP, bundled="vggish-demo.pth", license="Apache-2.0"),
    PretrainedCfg(name="vggish-test-map", **_AUDIO_MAP),
])

def _create_sdavs(name: str, **kwargs) -> SDAVS:
    """Build variant ``name``; ``gumbel="none"`` is accepted (the exporter passes it): SDAVS has no noise."""
    if kwargs.pop("gumbel", "none") != "none":
        raise TypeError(f"{name}: SDAVS has no stochastic layers; gumbel must be 'none'")
    pcfg = pretrained_cfg(name)
    return SDAVS(variant_config(SDAVSConfig, name, "SDAVS", kwargs, resolution=pcfg.input_size,
                                frames=pcfg.frames_per_clip, num_classes=pcfg.num_classes,
                                output_size=pcfg.output_size))


@register_model("sdavs-s4-swinb")
def sdavs_s4_swinb(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-s4-swinb", **kwargs)


@register_model("sdavs-s4-pvt")
def sdavs_s4_pvt(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-s4-pvt", **kwargs)


@register_model("sdavs-ms3-swinb")
def sdavs_ms3_swinb(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-ms3-swinb", **kwargs)


@register_model("sdavs-ms3-pvt")
def sdavs_ms3_pvt(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-ms3-pvt", **kwargs)


@register_model("sdavs-avss-swinb")
def sdavs_avss_swinb(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-avss-swinb", **kwargs)


@register_model("sdavs-avss-pvt")
def sdavs_avss_pvt(**kwargs) -> SDAVS:
    return _create_sdavs("sdavs-avss-pvt", **kwargs)


@register_model("sdavs-s4-demo")
def sdavs_s4_demo(**kwargs) -> SDAVS:
    model_args = dict(audio_channels=64, dim=32, heads=2, kv_size=4, car_reduction=8, norm_groups=8)
    return _create_sdavs("sdavs-s4-demo", **dict(model_args, **kwargs))


@register_model("sdavs-test")
def sdavs_test(**kwargs) -> SDAVS:
    model_args = dict(audio_channels=8, dim=16, heads=2, kv_size=2, car_reduction=4, norm_groups=8)
    return _create_sdavs("sdavs-test", **dict(model_args, **kwargs))


@register_model("vggish-map")
def vggish_map(**kwargs) -> VGGishMap:
    """VGGish (torchvggish's ``vggish-10086976.pth``) returning its 512 x 6 x 4 conv map."""
    return VGGishMap(**kwargs)


@register_model("vggish-demo-map")
def vggish_demo_map(**kwargs) -> VGGishMap:
    """``vggish-demo`` (its shipped weights, frozen) returning its 64 x 6 x 4 conv map."""
    model_args = dict(layout=(16, "M", 32, "M", 64, "M", 64, "M"), hidden=128, embedding_dim=128)
    return VGGishMap(**dict(model_args, **kwargs))


@register_model("vggish-test-map")
def vggish_test_map(**kwargs) -> VGGishMap:
    model_args = dict(layout=(4, "M", 8, "M", 8, "M", 8, "M"), hidden=16, embedding_dim=128)
    return VGGishMap(**dict(model_args, **kwargs))
