"""ONNX graphs of a SelM or SDAVS model: the full clip graph and the streaming split (encoder, temporal, decoder).

VGGish is inside the graphs that take audio, so every graph is fed VGGish log-mel examples directly (the
runtime computes log-mel and nothing else)::

    full      frames [T,3,R,R], log_mel [T,1,96,64] (, gumbel_noise [T,2,S])   -> logits [T,C,224,224]
    encoder   frame [1,3,R,R], log_mel [1,1,96,64]          -> map1..map4 [1,256,Hs,Ws], pooled [1,4,256], audio [1,256]
    temporal  pooled [T,4,256], audio [T,256]               -> gates [T,4,256], audio_out [T,256]
    decoder   map1..map4, gates [1,4,256], audio_out [1,256] (, gumbel_noise [1,2,S])   -> logits [1,C,224,224]

Streaming: run the encoder once per new frame, keep its ``pooled``/``audio`` (and the newest maps), run the
temporal graph on the last T tokens and decode the newest frame with row T-1 of ``gates``/``audio_out``: this
equals the full graph's output for that frame. All shapes are static (SelM's learned positional embeddings fix
the resolution; T is the model's clip length).

SDAVS (``export.models.sdavs``) mixes frames in every fusion stage (DAMF's causal 3x3x3 query conv), so its split
puts the whole fusion decoder in the temporal graph, over the window of cached encoder outputs::

    encoder   frame [1,3,R,R], log_mel [1,1,96,64]  -> feat1..feat4 (backbone maps, strides 4..32), audio [1,C,6,4]
    temporal  feat1..feat4 [T,...], audio [T,C,6,4] -> mask_logits [T,K,R/4,R/4]     (SNRP, DAMF, decoder, head)
    decoder   mask_logits [1,K,R/4,R/4]             -> logits [1,K,224,224]          (the final resize)

The fusion decoder is causal in T, so row k-1 of a window holding k frames equals the full graph's output.

AVS-Mamba (``export.models.avs_mamba``) has VGGish inside the model and scans its window in both directions, so
its temporal graph is non-causal: the runtime fills all T slots (``StreamingSpec.fill == "repeat-oldest"``)::

    encoder   frame [1,3,R,R], log_mel [1,1,96,64]  -> map1..map4 [1,C,R/4..R/32], audio [1,C]   (backbones)
    temporal  map1..map4 [T,...], audio [T,C]        -> mask_features [T,C,R/4,R/4], query [T,1,C] (MTE, MAD, CIP)
    decoder   mask_features [1,...], query [1,1,C]   -> logits [1,K,R,R]                          (the head)

Its scans (up to T * ((R/4)^2 + 1) steps: 15,685 at 224) are ``avs::SelectiveScan`` nodes: too long to lower.

COMBO (``export.models.combo``) runs every module per frame, so its window is one frame (T = 1 in every graph) and
each frame has a second image input, its Maskige (``manifest.maskige``)::

    full      frames [1,3,R,R], maskige [1,3,R,R], log_mel [1,1,96,64]  -> logits [1,K',R,R]
    encoder   frame, maskige, log_mel -> mask_features [1,C,R/4,R/4], level1..level3 (R/32..R/8), audio [1,1,128]
    temporal  mask_features, audio    -> fused_features [1,C,R/4,R/4], audio_query [1,C]   (BFM + audio MLP)
    decoder   level1..level3, fused_features, audio_query -> logits                       (masked decoder)

K' is 1 for the binary variants (score_object - score_background) and K for AVSS.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import torch
import torch.nn as nn

from runtime.manifest import MaskigeSpec, TensorSpec

GRAPH_FILES = {"full": "model.onnx", "encoder": "encoder.onnx", "temporal": "temporal.onnx",
               "decoder": "decoder.onnx"}
MAP_NAMES = ("map1", "map2", "map3", "map4")
CARRY = ("pooled", "audio")          # encoder outputs the runtime keeps per frame for the temporal graph
FEATURE_NAMES = ("feat1", "feat2", "feat3", "feat4")
SDAVS_CARRY = (*FEATURE_NAMES, "audio")
AVS_MAMBA_CARRY = (*MAP_NAMES, "audio")
LEVEL_NAMES = ("level1", "level2", "level3")
COMBO_CARRY = ("mask_features", "audio")
MASKIGE_INPUT = "maskige"
EXPORTABLE_FAMILIES = ("selm", "sdavs", "avs-mamba", "combo")  # families whose graphs this module knows
LOG_MEL_EXAMPLE = (1, 96, 64)
LOG_MEL_RANGE = (-4.6, 3.0)          # log(0.01) (silence) .. loud speech/music, for random validation inputs
MIN_OPSET = 18
DEFAULT_OPSET = 18
_DROPPED_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


class ClipGraph(nn.Module):
    """One clip: frames + log-mel (+ Gumbel noise) -> logits, VGGish inside."""

    def __init__(self, selm: nn.Module, vggish: nn.Module):
        super().__init__()
        self.selm, self.vggish = selm, vggish

    def forward(self, frames, log_mel, gumbel_noise=None):
        return self.selm(frames, self.vggish(log_mel), gumbel_noise=gumbel_noise)


class EncoderGraph(nn.Module):
    """One frame + its log-mel example -> that frame's four maps, pooled tokens and audio token."""

    def __init__(self, selm: nn.Module, vggish: nn.Module):
        super().__init__()
        self.selm, self.vggish = selm, vggish

    def forward(self, frame, log_mel):
        maps, pooled, audio = self.selm.encode_frames(frame, self.vggish(log_mel))
        return (*maps, pooled, audio)


class TemporalGraph(nn.Module):
    """The window's per-frame tokens -> per-frame gates and audio tokens (the only graph that mixes frames)."""

    def __init__(self, selm: nn.Module):
        super().__init__()
        self.selm = selm

    def forward(self, pooled, audio):
        return self.selm.temporal(pooled, audio)


class DecoderGraph(nn.Module):
    """One frame's maps + its gates and audio token (+ Gumbel noise) -> its logits."""

    def __init__(self, selm: nn.Module):
        super().__init__()
        self.selm = selm

    def forward(self, map1, map2, map3, map4, gates, audio_out, gumbel_noise=None):
        return self.selm.decode_frames((map1, map2, map3, map4), gates, audio_out, gumbel_noise=gumbel_noise)


class SDAVSClipGraph(nn.Module):
    """SDAVS, one clip: frames + log-mel -> logits, the VGGish conv map inside."""

    def __init__(self, model: nn.Module, vggish: nn.Module):
        super().__init__()
        self.model, self.vggish = model, vggish

    def forward(self, frames, log_mel):
        return self.model(frames, self.vggish(log_mel))


class SDAVSEncoderGraph(nn.Module):
    """SDAVS, one frame: backbone maps and the attended audio map."""

    def __init__(self, model: nn.Module, vggish: nn.Module):
        super().__init__()
        self.model, self.vggish = model, vggish

    def forward(self, frame, log_mel):
        feats, audio = self.model.encode_frames(frame, self.vggish(log_mel))
        return (*feats, audio)


class SDAVSTemporalGraph(nn.Module):
    """SDAVS's fusion decoder over the window (the only graph that mixes frames) -> stride-4 mask logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, feat1, feat2, feat3, feat4, audio):
        return self.model.fuse((feat1, feat2, feat3, feat4), audio)


class SDAVSDecoderGraph(nn.Module):
    """SDAVS, one frame: stride-4 mask logits -> logits at the output size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mask_logits):
        return self.model.decode(mask_logits)


class AVSMambaClipGraph(nn.Module):
    """AVS-Mamba, one clip: frames + log-mel -> logits (VGGish is the model's ``audio_backbone``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames, log_mel):
        return self.model(frames, log_mel)


class AVSMambaEncoderGraph(nn.Module):
    """AVS-Mamba, one frame: the four projected backbone maps and the projected audio token."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frame, log_mel):
        audio, maps = self.model.encode_frames(frame, log_mel)
        return (*maps, audio)


class AVSMambaTemporalGraph(nn.Module):
    """AVS-Mamba's MTE, MAD and CIP over the window (non-causal) -> per-frame mask features and audio query."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, map1, map2, map3, map4, audio):
        mask_features, queries = self.model.fuse_features(audio, (map1, map2, map3, map4))
        return mask_features, queries[-1]


class AVSMambaDecoderGraph(nn.Module):
    """AVS-Mamba's head, one frame: mask features + the last decoder layer's query -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mask_features, query):
        return self.model.decode(mask_features, query)


class COMBOClipGraph(nn.Module):
    """COMBO, frames + their Maskiges + log-mel -> the exported logits (``combo.output_logits``)."""

    def __init__(self, model: nn.Module, output_kind: str):
        super().__init__()
        self.model, self.output_kind = model, output_kind

    def forward(self, frames, maskige, log_mel):
        from export.models.combo import output_logits

        return output_logits(self.model(frames, maskige, log_mel), self.output_kind)


class COMBOEncoderGraph(nn.Module):
    """COMBO, one frame: both backbones + SEM, the pixel decoder and VGGish."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frame, maskige, log_mel):
        mask_features, levels = self.model.sem_seg_head.pixel_decoder(self.model.encode_visual(frame, maskige))
        return (mask_features, *levels, self.model.audio_backbone(log_mel)[:, None, :])


class COMBOTemporalGraph(nn.Module):
    """COMBO, one frame: the bilateral fusion (BFM) and the audio MLP (a window of one frame)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.head = model.sem_seg_head

    def forward(self, mask_features, audio):
        fused, audio = self.head.fusion_module(mask_features, audio)
        return fused, self.head.audio_transformation(audio)[:, 0]


class COMBODecoderGraph(nn.Module):
    """COMBO, one frame: the masked-attention decoder and the semantic inference -> the exported logits."""

    def __init__(self, model: nn.Module, output_kind: str):
        super().__init__()
        self.model, self.output_kind = model, output_kind

    def forward(self, level1, level2, level3, fused_features, audio_query):
        from export.models.combo import output_logits, semantic_inference

        pred = self.model.sem_seg_head.predictor([level1, level2, level3], audio_query, fused_features)
        size = tuple(4 * d for d in fused_features.shape[-2:])
        scores = semantic_inference(pred["pred_logits"], pred["pred_masks"], size)
        return output_logits(scores, self.output_kind)


@dataclass(frozen=True)
class GraphDef:
    """A graph to export: its role, torch module, and the ONNX input/output names (in call order)."""
    role: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def file(self) -> str:
        return GRAPH_FILES[self.role]


def graph_defs(selm: nn.Module, vggish: nn.Module, gumbel_input: bool) -> dict[str, GraphDef]:
    """The four graphs of a SelM model, keyed by role."""
    noise = ("gumbel_noise",) if gumbel_input else ()
    return {
        "full": GraphDef("full", ClipGraph(selm, vggish), ("frames", "log_mel", *noise), ("logits",)),
        "encoder": GraphDef("encoder", EncoderGraph(selm, vggish), ("frame", "log_mel"),
                            (*MAP_NAMES, "pooled", "audio")),
        "temporal": GraphDef("temporal", TemporalGraph(selm), ("pooled", "audio"), ("gates", "audio_out")),
        "decoder": GraphDef("decoder", DecoderGraph(selm), (*MAP_NAMES, "gates", "audio_out", *noise),
                            ("logits",)),
    }


def sdavs_graph_defs(model: nn.Module, vggish: nn.Module) -> dict[str, GraphDef]:
    """The four graphs of an SDAVS model, keyed by role."""
    return {
        "full": GraphDef("full", SDAVSClipGraph(model, vggish), ("frames", "log_mel"), ("logits",)),
        "encoder": GraphDef("encoder", SDAVSEncoderGraph(model, vggish), ("frame", "log_mel"), SDAVS_CARRY),
        "temporal": GraphDef("temporal", SDAVSTemporalGraph(model), SDAVS_CARRY, ("mask_logits",)),
        "decoder": GraphDef("decoder", SDAVSDecoderGraph(model), ("mask_logits",), ("logits",)),
    }


def avs_mamba_graph_defs(model: nn.Module) -> dict[str, GraphDef]:
    """The four graphs of an AVS-Mamba model, keyed by role."""
    return {
        "full": GraphDef("full", AVSMambaClipGraph(model), ("frames", "log_mel"), ("logits",)),
        "encoder": GraphDef("encoder", AVSMambaEncoderGraph(model), ("frame", "log_mel"), AVS_MAMBA_CARRY),
        "temporal": GraphDef("temporal", AVSMambaTemporalGraph(model), AVS_MAMBA_CARRY, ("mask_features", "query")),
        "decoder": GraphDef("decoder", AVSMambaDecoderGraph(model), ("mask_features", "query"), ("logits",)),
    }


def combo_graph_defs(model: nn.Module, output_kind: str) -> dict[str, GraphDef]:
    """The four graphs of a COMBO model, keyed by role."""
    images = ("frame", MASKIGE_INPUT, "log_mel")
    return {
        "full": GraphDef("full", COMBOClipGraph(model, output_kind), ("frames", MASKIGE_INPUT, "log_mel"),
                         ("logits",)),
        "encoder": GraphDef("encoder", COMBOEncoderGraph(model), images, ("mask_features", *LEVEL_NAMES, "audio")),
        "temporal": GraphDef("temporal", COMBOTemporalGraph(model), COMBO_CARRY, ("fused_features", "audio_query")),
        "decoder": GraphDef("decoder", COMBODecoderGraph(model, output_kind),
                            (*LEVEL_NAMES, "fused_features", "audio_query"), ("logits",)),
    }


def window_frames(cfg) -> int:
    """T of the streaming window and of the full graph, from a ``PretrainedCfg``: the training clip length,
    except COMBO's 1 (every module of it is per frame)."""
    return 1 if cfg.family == "combo" else cfg.frames_per_clip


def maskige_spec(cfg) -> Optional[MaskigeSpec]:
    """The manifest's ``maskige`` entry of a COMBO variant (None for the other families): official weights were
    trained on Semantic-SAM's masks; without a --mask-source the runtime paints with the weight-free fallback."""
    if cfg.family != "combo":
        return None
    return MaskigeSpec(input=MASKIGE_INPUT, default_source="overseg",
                       trained_with="Semantic-SAM (Swin-L, level 3) masks, as the published Maskiges"
                       if not cfg.bundled else "the weight-free over-segmentation (overseg)")


def carry_names(family: str) -> tuple[str, ...]:
    """The encoder outputs the runtime caches per frame (= the temporal graph's inputs) for a model family."""
    return {"sdavs": SDAVS_CARRY, "avs-mamba": AVS_MAMBA_CARRY, "combo": COMBO_CARRY}.get(family, CARRY)


def window_fill(family: str) -> str:
    """How the runtime fills the temporal graph's T slots (``StreamingSpec.fill``): "leading" for the causal
    families (row k-1 of k frames is exact), "repeat-oldest" for AVS-Mamba (its reversed scans see every slot)."""
    return "repeat-oldest" if family == "avs-mamba" else "leading"


def longest_scan(cfg) -> int:
    """The longest selective scan in a variant's graphs (0: none), from its ``PretrainedCfg``: SelM scans its T
    frames; AVS-Mamba's longest is CIP's stride-4 audio-to-vision scan, T frames of (R/4)^2 tokens and one audio
    token each."""
    if cfg.family == "selm":
        return cfg.frames_per_clip
    if cfg.family == "avs-mamba":
        return cfg.frames_per_clip * ((cfg.input_size // 4) ** 2 + 1)
    return 0


def export_graphs(model: nn.Module, audio_encoder: nn.Module, gumbel_input: bool
                  ) -> tuple[dict[str, GraphDef], dict[str, GraphDef]]:
    """``(reference, exported)``: the graphs of the model as loaded (validation's reference) and as exported; for
    SelM with DAM's inert audio-to-visual branch folded into a constant, for SDAVS, AVS-Mamba and COMBO the same
    graphs (AVS-Mamba's and COMBO's VGGish is inside the model: ``audio_encoder`` is not used)."""
    from export.models.avs_mamba import AVSMamba
    from export.models.combo import COMBO
    from export.models.sdavs import SDAVS

    if isinstance(model, (SDAVS, AVSMamba, COMBO)):
        if gumbel_input:
            raise ValueError(f"{model.cfg.name} has no Gumbel noise: export it with --gumbel none")
        if isinstance(model, COMBO):
            defs = combo_graph_defs(model, model.pretrained_cfg.output_kind)
        else:
            defs = sdavs_graph_defs(model, audio_encoder) if isinstance(model, SDAVS) else avs_mamba_graph_defs(model)
        return defs, defs
    folded = copy.deepcopy(model).fold_inert()
    return graph_defs(model, audio_encoder, gumbel_input), graph_defs(folded, audio_encoder, gumbel_input)


def noise_shape(model: nn.Module, gumbel_input: bool) -> Optional[tuple[int, ...]]:
    """Shape of the full graph's ``gumbel_noise`` input, or None without one."""
    return tuple(model.gumbel_noise_shape(model.cfg.frames)) if gumbel_input else None


def run_torch(gdef: GraphDef, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``gdef``'s module on named numpy inputs; named numpy outputs."""
    args = [torch.from_numpy(feeds[name]) for name in gdef.inputs]
    with torch.inference_mode():
        out = gdef.module(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {name: t.detach().float().numpy() for name, t in zip(gdef.outputs, out)}


def sample_inputs(defs: dict[str, GraphDef], cfg, noise_shape: Optional[tuple[int, ...]],
                  seed: int, frames: Optional[int] = None) -> dict[str, dict[str, np.ndarray]]:
    """Random but plausible inputs for every graph, keyed by role then input name.

    The clip of ``frames`` (default ``cfg.frames``) frames (frames and Maskiges ~ N(0,1) after normalisation,
    log-mel uniform over its real range, Gumbel noise in (0,1)) feeds the full graph and, frame by frame, the
    encoder; the temporal and decoder inputs are what PyTorch's encoder and temporal stages make of that clip (the
    decoder gets the newest frame).
    """
    rng = np.random.default_rng(seed)
    t, r = frames or cfg.frames, cfg.resolution
    clip = {"frames": rng.standard_normal((t, 3, r, r), dtype=np.float32)}
    if MASKIGE_INPUT in defs["full"].inputs:
        clip[MASKIGE_INPUT] = rng.standard_normal((t, 3, r, r), dtype=np.float32)
    clip["log_mel"] = rng.uniform(*LOG_MEL_RANGE, size=(t, *LOG_MEL_EXAMPLE)).astype(np.float32)
    if noise_shape is not None:
        clip["gumbel_noise"] = rng.uniform(1e-6, 1 - 1e-6, size=noise_shape).astype(np.float32)
    per_frame = {name: clip[name] for name in (*defs["encoder"].inputs, "frames") if name in clip}
    per_frame["frame"] = per_frame.pop("frames")
    enc = run_torch(defs["encoder"], per_frame)                                 # all T frames in one batch
    temporal = {name: enc[name] for name in defs["temporal"].inputs}
    tem = run_torch(defs["temporal"], temporal)
    newest = slice(t - 1, t)
    decoder = {}
    for name in defs["decoder"].inputs:          # as the runtime feeds it: temporal rows, else encoder outputs
        decoder[name] = (tem[name] if name in tem else enc[name] if name in enc else clip[name])[newest]
    return {
        "full": clip,
        "encoder": {name: value[newest] for name, value in per_frame.items()},
        "temporal": temporal,
        "decoder": decoder,
    }


def _strip_debug_metadata(model: onnx.ModelProto) -> None:
    """Drop per-node stack traces and FX dumps (they hold local paths); keep the module name scopes."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROPPED_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def export_graph(gdef: GraphDef, feeds: dict[str, np.ndarray], out_dir: Path, opset: int, scan: str,
                 metadata: dict[str, str], verbose: bool = False) -> Path:
    """Export ``gdef`` (static shapes of ``feeds``) to ``out_dir/<file>`` + ``<file>.data``; check it; return path."""
    from export.ops.selective_scan_onnx import onnx_translation_table

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter needs opset >= {MIN_OPSET} (use --opset {MIN_OPSET})")
    path = out_dir / gdef.file
    args = tuple(torch.from_numpy(feeds[name]) for name in gdef.inputs)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with quiet, warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(gdef.module, args, dynamo=True, opset_version=opset,
                                        input_names=list(gdef.inputs), output_names=list(gdef.outputs),
                                        custom_translation_table=onnx_translation_table(scan), verbose=verbose)
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
    model = program.model_proto
    _strip_debug_metadata(model)
    onnx.helper.set_model_props(model, {**metadata, "avs.graph": gdef.role})
    data = f"{gdef.file}.data"
    (out_dir / data).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    if (out_dir / data).is_file():                 # a graph without weights (SDAVS's decoder) has none
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out_dir / data, 0o666 & ~umask)   # onnx writes external data owner-only
    onnx.checker.check_model(str(path), full_check=True)
    return path


def tensor_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Names, shapes and dtypes of an ONNX file's graph inputs and outputs (as the manifest records them)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        ttype = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in ttype.shape.dim]
        return TensorSpec(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name)

    initializers = {i.name for i in graph.initializer}
    return [spec(v) for v in graph.input if v.name not in initializers], [spec(v) for v in graph.output]


def uses_custom_ops(path: Path) -> bool:
    """Whether the graph holds ``avs`` domain nodes (ONNX Runtime then needs our custom-op library)."""
    from export.ops.selective_scan_onnx import DOMAIN

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.domain == DOMAIN for node in graph.node)
