"""COMBO: multi-order bilateral relations for audio-visual segmentation, S4 / MS3 / AVSS x ResNet-50 / PVT-v2-b5.

Paper: Q. Yang, X. Nie, T. Li, P. Gao, Y. Guo, C. Zhen, P. Yan, S. Xiang, "Cooperation Does Matter: Exploring
Multi-Order Bilateral Relations for Audio-Visual Segmentation", CVPR 2024 (arXiv:2312.06462). Official code:
https://github.com/yannqi/COMBO-AVS (@cb8af1c, Apache-2.0, a detectron2 project); weights (S4 only) at
https://huggingface.co/YannQi/COMBO-AVS-checkpoints. Written from ``shared/specs/combo.md`` and a reading of that
code, without detectron2; nothing is copied. Module and parameter names are the official ones, so the released
detectron2 checkpoints (weights under ``'model'``) load unchanged through :func:`checkpoint_filter_fn`
(``tests/combo_keys/`` holds their key/shape manifests and how they were derived).

Data path, every module per frame (N = B*T frames; nothing mixes frames except the audio-query layout below)::

    backbone(frame), pre_sam_backbone(Maskige)  -> res2..res5 each; SEM: res_i += SE_i(maskige_i) * maskige_i
    audio_backbone (VGGish, frozen)             -> audio token [N, 1, 128]
    sem_seg_head.pixel_decoder (MSDeformAttn)   -> mask features [N, 256, R/4, R/4], 3 maps (res5, res4, res3 level)
    sem_seg_head.fusion_module (BFM)            -> mask features and audio token attend to each other
    sem_seg_head.audio_transformation (MLP)     -> audio [N, 256], added to the 100 learnable queries
    sem_seg_head.predictor (masked decoder)     -> pred_logits [N, 100, K+1], pred_masks [N, 100, R/4, R/4]
    semantic_inference                          -> scores [N, K, R, R] (argmax = the segmentation)

The pixel decoder and the masked-attention decoder are :mod:`export.models.mask2former`; the ResNet-50 is
detectron2's layout, :mod:`export.models.d2_resnet`. Choices the spec leaves open are fixed in
:class:`COMBOConfig` and listed in its docstring.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ._pretrained import AVSBENCH_CLASSES, PretrainedCfg, voc_palette
from ._registry import (model_builder, pretrained_cfg, register_model, register_pretrained_cfgs,
                        variant_config)
from .d2_resnet import R50_WIDTHS, d2_resnet50
from .mask2former import MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder, sine_position_embedding
from .pvt_v2 import B5_WIDTHS, DEMO_WIDTHS, TEST_WIDTHS, pvt_v2_b5, pvt_v2_demo, pvt_v2_test

__all__ = ["COMBO", "COMBOConfig", "ChannelWeightedBlock", "BiMultiHeadAttention", "BiAttentionBlock", "AVFuse",
           "AudioMLP", "MaskFormerHead", "semantic_inference", "output_logits", "checkpoint_filter_fn",
           "default_cfgs"]

_BACKBONES = {"r50": (d2_resnet50, R50_WIDTHS), "pvt": (pvt_v2_b5, B5_WIDTHS),
              "pvt-demo": (pvt_v2_demo, DEMO_WIDTHS), "pvt-test": (pvt_v2_test, TEST_WIDTHS)}
_LEVELS = ("res2", "res3", "res4", "res5")
_CLAMP = 50000.0            # the fusion's logit clamp (fp16-safe), kept for identical numerics


# ----------------------------------------------------------------------------------------------------------------
# Siam-Encoder Module (SEM) and Bilateral-Fusion Module (BFM)
# ----------------------------------------------------------------------------------------------------------------

class ChannelWeightedBlock(nn.Module):
    """SEM's channel weights (squeeze-and-excitation): GAP -> ``fc1`` (C -> C/r) -> ReLU -> ``fc2`` -> sigmoid."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        if dim // reduction < 1:
            raise ValueError(f"SE block: {dim} channels cannot be reduced {reduction}x; lower se_reduction")
        self.fc1 = nn.Linear(dim, dim // reduction)
        self.fc2 = nn.Linear(dim // reduction, dim)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> weights [N, C, 1, 1] in (0, 1)."""
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return w[:, :, None, None]


class BiMultiHeadAttention(nn.Module):
    """One attention map between the pixels (queries) and the single audio token (key), used both ways.

    With one key per frame a softmax over keys would be identically 1, so, as the official code does, both
    directions normalise over the PIXEL axis: pixels receive ``softmax_pixels(S) V_a``, the audio token receives
    the attention-pooled visual values ``softmax_pixels(S)^T V_v``.
    """

    def __init__(self, v_dim: int, a_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"BFM: embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.dropout = num_heads, embed_dim // num_heads, dropout
        self.scale = self.head_dim ** -0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.a_proj = nn.Linear(a_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_a_proj = nn.Linear(a_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_a_proj = nn.Linear(embed_dim, a_dim)
        for m in self.children():
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """[N, L, E] -> [N * heads, L, E / heads]."""
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2).reshape(-1, length, self.head_dim)

    def _merge(self, x: Tensor, n: int) -> Tensor:
        """[N * heads, L, E / heads] -> [N, L, E]."""
        length = x.shape[1]
        return x.reshape(n, self.num_heads, length, self.head_dim).transpose(1, 2).reshape(n, length, -1)

    def forward(self, v: Tensor, a: Tensor, pos_v: Tensor, pos_a: Tensor) -> tuple[Tensor, Tensor]:
        """v [N, L, v_dim], a [N, 1, a_dim], positions broadcastable to them -> (delta_v, delta_a), same shapes."""
        n = v.shape[0]
        q = self._heads(self.v_proj(v + pos_v) * self.scale)
        k = self._heads(self.a_proj(a + pos_a))
        values_v, values_a = self._heads(self.values_v_proj(v)), self._heads(self.values_a_proj(a))
        s = torch.bmm(q, k.transpose(1, 2)).clamp(-_CLAMP, _CLAMP)                # [N*h, L, 1]
        to_pixels = s.softmax(dim=1)
        s_t = s.transpose(1, 2)                                                      # [N*h, 1, L]
        to_audio = (s_t - s_t.amax(dim=-1, keepdim=True)).clamp(min=-_CLAMP).softmax(dim=-1)
        to_pixels = F.dropout(to_pixels, self.dropout, self.training)
        to_audio = F.dropout(to_audio, self.dropout, self.training)
        delta_v = self.out_v_proj(self._merge(torch.bmm(to_pixels, values_a), n))    # [N, L, v_dim]
        delta_a = self.out_a_proj(self._merge(torch.bmm(to_audio, values_v), n))     # [N, 1, a_dim]
        return delta_v, delta_a


class BiAttentionBlock(nn.Module):
    """Pre-LN bilateral attention with layer scale: ``v = LN(v) + g_v * dv``, ``a = LN(a) + g_a * da``.

    The residual is added to the normalised inputs, as in the official code. Built for one visual level (the
    lists hold one entry: COMBO's late fusion fuses only the stride-4 mask features).
    """

    def __init__(self, v_dim: int, a_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1,
                 init_values: float = 1e-4) -> None:
        super().__init__()
        self.layer_norm_v_list = nn.ModuleList([nn.LayerNorm(v_dim)])
        self.layer_norm_a_list = nn.ModuleList([nn.LayerNorm(a_dim)])
        self.attn_list = nn.ModuleList([BiMultiHeadAttention(v_dim, a_dim, embed_dim, num_heads, dropout)])
        self.gamma_v_list = nn.ParameterList([nn.Parameter(init_values * torch.ones(v_dim))])
        self.gamma_a = nn.Parameter(init_values * torch.ones(a_dim))

    def forward(self, v: Tensor, a: Tensor, pos_v: Tensor, pos_a: Tensor) -> tuple[Tensor, Tensor]:
        v, a = self.layer_norm_v_list[0](v), self.layer_norm_a_list[0](a)
        delta_v, delta_a = self.attn_list[0](v, a, pos_v, pos_a)
        return v + self.gamma_v_list[0] * delta_v, a + self.gamma_a * delta_a


class AVFuse(nn.Module):
    """The BFM ("MHA-B"): level embedding + fixed sine positions on the pixels, a learnable position on the audio
    token, then :class:`BiAttentionBlock`."""

    def __init__(self, v_dim: int, a_dim: int, num_heads: int, dropout: float = 0.1,
                 init_values: float = 1e-4) -> None:
        super().__init__()
        self.audio_pos = nn.Embedding(1, a_dim)
        self.level_embed = nn.Embedding(1, v_dim)
        self.b_attn = BiAttentionBlock(v_dim, a_dim, v_dim, num_heads, dropout, init_values)

    def forward(self, visual: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """visual [N, C, H, W], audio [N, 1, A] -> fused (same shapes)."""
        n, c, h, w = visual.shape
        pos_v = sine_position_embedding(h, w, c // 2, visual.device, visual.dtype).flatten(2).transpose(1, 2)
        tokens = (visual + self.level_embed.weight[0][None, :, None, None]).flatten(2).transpose(1, 2)
        v, a = self.b_attn(tokens, audio, pos_v, self.audio_pos.weight[None])
        return v.transpose(1, 2).reshape(n, c, h, w), a


class AudioMLP(nn.Module):
    """``embeddings``: Linear(128 -> hidden) -> ReLU -> Linear(hidden -> hidden) -> ReLU -> Linear(hidden -> out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.embeddings = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                        nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.embeddings(x)


class MaskFormerHead(nn.Module):
    """``sem_seg_head``: pixel decoder, late BFM on the mask features, audio MLP, masked-attention decoder."""

    def __init__(self, cfg: "COMBOConfig", widths: tuple[int, ...]) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            dict(zip(_LEVELS, widths)), conv_dim=cfg.conv_dim, mask_dim=cfg.mask_dim, enc_layers=cfg.enc_layers,
            nheads=cfg.nheads, n_points=cfg.enc_points, dim_feedforward=cfg.enc_ffn, gn_groups=cfg.norm_groups)
        self.fusion_module = AVFuse(cfg.mask_dim, cfg.audio_dim, cfg.nheads, cfg.fusion_dropout,
                                    cfg.layer_scale_init)
        self.audio_transformation = AudioMLP(cfg.audio_dim, cfg.audio_mlp_hidden, cfg.hidden_dim)
        self.predictor = MultiScaleMaskedTransformerDecoder(
            cfg.num_classes, in_channels=cfg.conv_dim, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
            nheads=cfg.nheads, dim_feedforward=cfg.dec_ffn, dec_layers=cfg.dec_layers, mask_dim=cfg.mask_dim,
            audio_layout=cfg.audio_layout)

    def forward(self, features: dict[str, Tensor], audio: Tensor, aux: bool = False) -> dict:
        """Backbone maps {"res2".."res5"} and the audio token [N, 1, A] -> the decoder's prediction dict."""
        mask_features, multi_scale = self.pixel_decoder(features)
        mask_features, audio = self.fusion_module(mask_features, audio)
        queries = self.audio_transformation(audio)[:, 0]
        return self.predictor(multi_scale, queries, mask_features, aux=aux)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class COMBOConfig:
    """One COMBO variant's architecture. Spec ambiguities (combo.md §3.9), each decided here once:

    * Inputs are ImageNet-normalised outside the model (mean/std of RGB in [0, 1]); the official model takes
      0..255 RGB and normalises inside with PIXEL_MEAN/STD = 255 x the same values, so this is the same
      arithmetic. The Maskige is normalised the same way (as upstream) and is a model input, made per frame
      by a mask source outside the network (spec §6 item 1).
    * SEM: the code's SE block (sigmoid, reduction ``se_reduction`` 16), not the paper's linear W; separate
      weights for the Maskige backbone (the released default; the shared-weight ablation is not built).
    * BFM: the code's ``MHA-B`` late fusion on the mask features only: pre-LN, layer scale 1e-4, level embedding,
      softmax over pixels in both directions, dropout ``fusion_dropout`` in training only.
    * Audio queries: ``query_feat + MLP(fused audio)`` ("add"). ``audio_layout`` "official" spreads the audio
      over the queries as the released code does (with N > 1 frames in one call, query q of frame b takes frame
      (q*N + b) // Q's audio; the checkpoints were trained and evaluated that way), "per_sample" gives each frame
      its own audio. The two agree for one frame per call (the streaming runtime).
    * Output: ``semantic_inference`` (softmax over classes without "no object" x sigmoid(mask), summed over
      queries, masks first resized bilinearly to the input size). For S4/MS3, K = 2 (background, object):
      argmax equals the official evaluator's softmax > 0.5 on the object channel.
    * AVSS padded frames: the caller does not run them (upstream drops their audio by the clip's validity flags);
      no validity input.

    Args:
        name, backbone ("r50" | "pvt" | "pvt-demo" | "pvt-test"), setting ("s4" | "ms3" | "avss" | "test").
        audio_backbone: registry name of the VGGish variant inside the model (frozen).
        resolution: input side the variant is exported at (any multiple of 32 runs).
        frames: T per clip in training (the network itself is per frame).
        num_classes: K without "no object": 2 (S4/MS3) or 71 (AVSS).
        audio_dim: VGGish embedding width (128). conv_dim, mask_dim, hidden_dim: 256.
        num_queries: 100. nheads: 8 (pixel decoder, BFM, decoder). norm_groups: GroupNorm groups (32).
        enc_layers, enc_points, enc_ffn: deformable encoder (6, 4, 1024). dec_layers, dec_ffn: decoder (9, 2048).
        audio_mlp_hidden: 4096. se_reduction: 16. layer_scale_init: 1e-4. fusion_dropout: 0.1.
        audio_layout: "official" | "per_sample" (above).
    """

    name: str
    backbone: str
    setting: str
    audio_backbone: str = "vggish"
    resolution: int = 224
    frames: int = 5
    num_classes: int = 2
    audio_dim: int = 128
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    norm_groups: int = 32
    enc_layers: int = 6
    enc_points: int = 4
    enc_ffn: int = 1024
    dec_layers: int = 9
    dec_ffn: int = 2048
    audio_mlp_hidden: int = 4096
    se_reduction: int = 16
    layer_scale_init: float = 1e-4
    fusion_dropout: float = 0.1
    audio_layout: str = "official"


class COMBO(nn.Module):
    """COMBO (the official ``MaskFormer`` meta-architecture with ``USE_PRE_SAM``, late ``MHA-B`` fusion, "add").

    ``forward(frames [N,3,R,R], maskige [N,3,R,R], log_mel [N,1,96,64]) -> scores [N,K,R,R]``; with ``raw=True``
    the decoder's dict (``pred_logits`` [N,Q,K+1], ``pred_masks`` [N,Q,R/4,R/4], ``aux_outputs``) for training.
    """

    def __init__(self, cfg: COMBOConfig) -> None:
        super().__init__()
        if cfg.backbone not in _BACKBONES:
            raise ValueError(f"{cfg.name}: unknown backbone {cfg.backbone!r} (known: {', '.join(_BACKBONES)})")
        self.cfg = cfg
        build, widths = _BACKBONES[cfg.backbone]
        self.backbone = build()
        self.pre_sam_backbone = build()
        self.scale_factor_module = nn.ModuleList(ChannelWeightedBlock(c, cfg.se_reduction) for c in widths)
        self.audio_backbone = model_builder(cfg.audio_backbone)()
        self.audio_backbone.requires_grad_(False)
        self.sem_seg_head = MaskFormerHead(cfg, widths)

    def _check(self, frames: Tensor, maskige: Tensor, log_mel: Tensor) -> None:
        if not isinstance(frames, Tensor) or frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[0] == 0 \
                or frames.shape[2] % 32 or frames.shape[3] % 32:
            got = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames: {self.cfg.name} expects [N, 3, R, R'] with R, R' multiples of 32 "
                             f"(ImageNet-normalised RGB), got {got}")
        if not isinstance(maskige, Tensor) or maskige.shape != frames.shape:
            got = list(maskige.shape) if isinstance(maskige, Tensor) else type(maskige).__name__
            raise ValueError(f"maskige: expected one Maskige per frame, {list(frames.shape)} (ImageNet-normalised "
                             f"RGB like the frames), got {got}")
        if not isinstance(log_mel, Tensor) or tuple(log_mel.shape) != (frames.shape[0], 1, 96, 64):
            got = list(log_mel.shape) if isinstance(log_mel, Tensor) else type(log_mel).__name__
            raise ValueError(f"log_mel: expected [{frames.shape[0]}, 1, 96, 64] (one VGGish example per frame), "
                             f"got {got}")

    def encode_visual(self, frames: Tensor, maskige: Tensor) -> dict[str, Tensor]:
        """Both backbones and the SEM: {"res2".."res5"}, each ``frame_i + SE_i(maskige_i) * maskige_i``."""
        features, x, m = {}, frames, maskige
        for i, (level, se) in enumerate(zip(_LEVELS, self.scale_factor_module)):
            # NOTE: the next stage takes the backbone's own output, not the fused map (upstream runs both
            # backbones to the end, then fuses).
            x = self.backbone.forward_stage(i, x)
            m = self.pre_sam_backbone.forward_stage(i, m)
            features[level] = x + se(m) * m
        return features

    def predict(self, frames: Tensor, maskige: Tensor, log_mel: Tensor, aux: bool = False) -> dict:
        """The decoder's prediction dict (``aux_outputs`` too when ``aux``)."""
        self._check(frames, maskige, log_mel)
        audio = self.audio_backbone(log_mel)[:, None, :]
        return self.sem_seg_head(self.encode_visual(frames, maskige), audio, aux=aux)

    def forward(self, frames: Tensor, maskige: Tensor, log_mel: Tensor, raw: bool = False) -> Tensor | dict:
        """frames, maskige [N,3,R,R] ImageNet-normalised, log_mel [N,1,96,64] -> scores [N,K,R,R]; ``raw``: the
        prediction dict with the auxiliary (deep-supervision) outputs, for training."""
        if raw:
            return self.predict(frames, maskige, log_mel, aux=True)
        out = self.predict(frames, maskige, log_mel)
        return semantic_inference(out["pred_logits"], out["pred_masks"], tuple(frames.shape[-2:]))


def output_logits(scores: Tensor, output_kind: str) -> Tensor:
    """What the exported graphs output: the ``semantic`` variants' scores [N, K, R, R] as they are; for the
    ``binary`` ones (S4/MS3: background, object) the logit score_object - score_background [N, 1, R, R], whose
    sigmoid is the official evaluator's softmax over the two scores, class 1 (COMBO's metric variant)."""
    return scores[:, 1:2] - scores[:, :1] if output_kind == "binary" else scores


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask classification -> per-class scores: masks resized (bilinear) to ``size`` then sigmoid, weighted by the
    class probabilities without the last ("no object") column and summed over queries.

    Args:
        pred_logits: [N, Q, K+1]. pred_masks: [N, Q, h, w] mask logits. size: output (H, W).

    Returns:
        [N, K, H, W] scores in [0, Q]; argmax over K is the segmentation.
    """
    masks = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    probs = pred_logits.softmax(dim=-1)[..., :-1]
    n, q, h, w = masks.shape
    return torch.matmul(probs.transpose(1, 2), masks.reshape(n, q, h * w)).reshape(n, -1, h, w)


_OWN_PREFIXES = ("backbone.", "pre_sam_backbone.", "scale_factor_module.", "audio_backbone.", "sem_seg_head.")
_NOT_SAVED = ("pixel_mean", "pixel_std")          # upstream's non-persistent buffers (normalisation is outside)
_TRAINING_ONLY = ("criterion.",)                  # the loss's ``empty_weight`` (no-object class weight) buffer
_BARE_BACKBONE = re.compile(r"(stem|res[2-5]|patch_embed[1-4]|block[1-4]|norm[1-4])\.")
_CLASSIFIER = ("head.", "linear.", "fc.")         # ImageNet heads in pretrained backbone files


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: Optional[nn.Module] = None) -> dict[str, Tensor]:
    """An official COMBO checkpoint (or a pretrained backbone) -> our state_dict layout.

    * A detectron2 checkpoint: weights under ``'model'`` (trainer state beside them is ignored), no ``module.``
      prefix (tolerated). Our names are the official ones, so only ``pixel_mean``/``pixel_std`` (if present) and
      the loss's ``criterion.empty_weight`` are dropped; the two backbones' keys are kept as they are (the
      released models trained them separately).
    * A bare visual backbone (detectron2-named ResNet-50 ``stem.*``/``res*.*`` or PVT-v2 ``patch_embed*``/
      ``block*``/``norm*``, e.g. the ``model`` of ``d2_pvt_v2_b5.pkl``): the official recipe initialises BOTH
      backbones from it (detectron2's name matcher matched each key to ``backbone.*`` and ``pre_sam_backbone.*``,
      which the README's one-line patch allows), so each key is returned twice, under both prefixes, as separate
      copies (the weights are not tied). The ImageNet classifier is dropped. The result covers the backbones
      only: it initialises training (``load_state_dict(..., strict=False)``), it is not a model, and strict loading
      names the missing head keys.
    """
    if isinstance(state_dict.get("model"), Mapping):
        state_dict = state_dict["model"]
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key not in _NOT_SAVED and not key.startswith(_TRAINING_ONLY):
            out[key] = value
    if out and not any(k.startswith(_OWN_PREFIXES) for k in out) and any(_BARE_BACKBONE.match(k) for k in out):
        kept = {k: v for k, v in out.items() if not k.startswith(_CLASSIFIER)}
        return {**{f"backbone.{k}": v for k, v in kept.items()},
                **{f"pre_sam_backbone.{k}": v.clone() for k, v in kept.items()}}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Configurations and registrations
# ----------------------------------------------------------------------------------------------------------------

# NOTE: S4/MS3 (K = 2) are "binary" for the runtime: their graphs output score_object - score_background, whose
# sigmoid is the official evaluator's softmaxed object probability (see ``output_logits``).
_FAMILY_CFG = PretrainedCfg(name="combo", family="combo", audio_encoder="vggish", input_size=224, output_size=224,
                            origin_url="https://github.com/yannqi/COMBO-AVS", paper="arXiv:2312.06462")
# NOTE: only the S4 checkpoints are released (HF repo, checkpoints/avs_s4/COMBO_{R50,PVTV2B5}_bs8_80k/).
_RELEASED = dict(file="model_best.pth", url="https://huggingface.co/YannQi/COMBO-AVS-checkpoints",
                 license="Apache-2.0")
_AVSS = dict(frames_per_clip=10, output_kind="semantic", num_classes=71, class_names=AVSBENCH_CLASSES,
             palette=voc_palette(71), threshold=None)


def _cfg(name: str, setting: str, backbone: str, **kwargs) -> PretrainedCfg:
    """A variant's entry: the family default with its name, setting and backbone."""
    return replace(_FAMILY_CFG, name=name, setting=setting, backbone=backbone, **kwargs)


default_cfgs = register_pretrained_cfgs([
    _cfg("combo-s4-r50", "s4", "r50", **_RELEASED),
    _cfg("combo-s4-pvt", "s4", "pvt", **_RELEASED),
    _cfg("combo-ms3-r50", "ms3", "r50"),
    _cfg("combo-ms3-pvt", "ms3", "pvt"),
    _cfg("combo-avss-r50", "avss", "r50", **_AVSS),
    _cfg("combo-avss-pvt", "avss", "pvt", **_AVSS),
    # Demo: the SelM demo's light PVT-v2 (twice: frames and Maskiges) at 128 px, the frozen vggish-demo, small
    # heads; trained on avs-synth with over-segmentation Maskiges (export.train_combo_demo).
    _cfg("combo-s4-demo", "s4", "pvt-demo", audio_encoder="vggish-demo", input_size=128, output_size=128,
         bundled="combo-s4-demo.pth", license="Apache-2.0"),
    # Tiny random-weight variant for fast tests (no checkpoint exists).
    _cfg("combo-test", "test", "pvt-test", audio_encoder="vggish-test", input_size=64, output_size=64),
])

def _create_combo(name: str, **kwargs) -> COMBO:
    """Build variant ``name``: its pretrained config fixes backbone, task, T and K; ``kwargs`` the architecture."""
    pcfg = pretrained_cfg(name)
    return COMBO(variant_config(COMBOConfig, name, "COMBO", kwargs, audio_backbone=pcfg.audio_encoder,
                                resolution=pcfg.input_size, frames=pcfg.frames_per_clip,
                                num_classes=2 if pcfg.output_kind == "binary" else pcfg.num_classes))


@register_model("combo-s4-r50", checkpoint_filter_fn)
def combo_s4_r50(**kwargs) -> COMBO:
    return _create_combo("combo-s4-r50", **kwargs)


@register_model("combo-s4-pvt", checkpoint_filter_fn)
def combo_s4_pvt(**kwargs) -> COMBO:
    return _create_combo("combo-s4-pvt", **kwargs)


@register_model("combo-ms3-r50", checkpoint_filter_fn)
def combo_ms3_r50(**kwargs) -> COMBO:
    return _create_combo("combo-ms3-r50", **kwargs)


@register_model("combo-ms3-pvt", checkpoint_filter_fn)
def combo_ms3_pvt(**kwargs) -> COMBO:
    return _create_combo("combo-ms3-pvt", **kwargs)


@register_model("combo-avss-r50", checkpoint_filter_fn)
def combo_avss_r50(**kwargs) -> COMBO:
    return _create_combo("combo-avss-r50", **kwargs)


@register_model("combo-avss-pvt", checkpoint_filter_fn)
def combo_avss_pvt(**kwargs) -> COMBO:
    return _create_combo("combo-avss-pvt", **kwargs)


@register_model("combo-s4-demo", checkpoint_filter_fn)
def combo_s4_demo(**kwargs) -> COMBO:
    model_args = dict(conv_dim=64, mask_dim=64, hidden_dim=64, num_queries=20, nheads=4, norm_groups=8,
                      enc_layers=2, enc_ffn=128, dec_layers=3, dec_ffn=128, audio_mlp_hidden=256)
    return _create_combo("combo-s4-demo", **dict(model_args, **kwargs))


@register_model("combo-test", checkpoint_filter_fn)
def combo_test(**kwargs) -> COMBO:
    model_args = dict(conv_dim=16, mask_dim=16, hidden_dim=16, num_queries=8, nheads=2, norm_groups=4,
                      enc_layers=1, enc_ffn=32, dec_layers=3, dec_ffn=32, audio_mlp_hidden=32, se_reduction=4)
    return _create_combo("combo-test", **dict(model_args, **kwargs))
