"""Write the COMBO state_dict manifests (``<variant>.tsv``) beside this file.

Each manifest lists what an official COMBO checkpoint (detectron2 ``Checkpointer`` file, weights under ``'model'``)
holds: every key, shape and dtype of ``MaskFormer.state_dict()`` as the public code builds it for that variant's
config (github.com/yannqi/COMBO-AVS @cb8af1c, ``configs/avs_{s4,ms3,ss}/COMBO_{R50,PVTV2B5}_bs8_*.yaml``).
The keys are enumerated here from a reading of the constructors, independently of ``export/models/combo.py``:

* ``models/maskformer_model.py`` ``MaskFormer``: registration order ``backbone``, ``pre_sam_backbone`` (a second,
  separately weighted ``build_backbone(cfg)``), ``scale_factor_module`` (one ``channel_weighted_block`` per
  ``PRE_SAM_DIM``, ``models/utils/misc.py``: ``fc1`` C -> int(C/16), ``fc2`` back), ``audio_backbone`` (torchvggish
  ``VGG``: ``features``/``embeddings``, no ``pproc`` since ``POSTPROCESS_LOG_MEL_WITH_PCA`` is False),
  ``sem_seg_head``, ``criterion`` (``SetCriterion``/``SetCriterion_SS`` register the persistent buffer
  ``empty_weight`` [NUM_CLASSES+1]). ``pixel_mean``/``pixel_std`` are non-persistent buffers: not saved.
* R50: detectron2 v0.6 ``build_resnet_backbone`` (stem 64, bottleneck 3/4/6/3, FrozenBN = 4 buffers per conv,
  convs without bias, ``shortcut`` on each stage's first block). PVT: ``models/modeling/backbone/pvtv2.py``
  ``build_pvtv2_b5_backbone`` (qkv_bias True, ``attn.sr``/``attn.norm`` where sr_ratio > 1, no head).
* ``sem_seg_head`` = ``meta_arch/mask_former_head.py`` ``MaskFormerHead`` (late fusion): ``pixel_decoder``
  (``pixel_decoder/msdeformattn.py``: ``input_proj`` res5/res4/res3 1x1 conv + GN, ``transformer.level_embed`` and 6
  ``transformer.encoder.layers`` (``ops/modules/ms_deform_attn.py`` ``MSDeformAttn`` + norm1/linear1/linear2/norm2,
  FFN 1024), ``mask_features`` 1x1 with bias, one FPN level ``adapter_1``/``layer_1`` without bias, with GN
  ``norm``), ``fusion_module`` (``fusion_module/AVFuse.py`` + ``utils/fuse_helper.py`` ``BiAttentionBlock``),
  ``audio_transformation`` (``misc/audio_transformation.py``: 128 -> 4096 -> 4096 -> 256) and ``predictor``
  (``transformer_decoder/transformer_decoder.py``: DEC_LAYERS 10 - 1 = 9 layers, nn.MultiheadAttention packed
  ``in_proj``, FFN 2048, ``input_proj`` empty since in_channels == hidden_dim, ``class_embed`` NUM_CLASSES + 1,
  ``mask_embed`` 3 Linear layers).

The VGGish keys are checked against ``shared/reference/state_dicts/vggish.tsv`` (torchvggish's released file).
Run: ``python tests/combo_keys/derive.py``.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "reference" / "state_dicts"
D, QUERIES, AUDIO, MLP_HIDDEN = 256, 100, 128, 4096
NUM_CLASSES = {"s4": 2, "ms3": 2, "avss": 71}
WIDTHS = {"r50": (256, 512, 1024, 2048), "pvt": (64, 128, 320, 512)}


def lin(prefix: str, out: int, inp: int, bias: bool = True) -> list:
    return [(f"{prefix}weight", [out, inp])] + ([(f"{prefix}bias", [out])] if bias else [])


def ln(prefix: str, n: int) -> list:
    return [(f"{prefix}weight", [n]), (f"{prefix}bias", [n])]


def frozen_conv(prefix: str, out: int, inp: int, k: int) -> list:
    return [(f"{prefix}weight", [out, inp, k, k])] + [(f"{prefix}norm.{b}", [out]) for b in
                                                      ("weight", "bias", "running_mean", "running_var")]


def r50(p: str) -> list:
    keys = frozen_conv(f"{p}stem.conv1.", 64, 3, 7)
    channels = 64
    for stage, depth in enumerate((3, 4, 6, 3)):
        width = 64 * 2 ** stage
        for j in range(depth):
            b = f"{p}res{stage + 2}.{j}."
            if j == 0:
                keys += frozen_conv(f"{b}shortcut.", 4 * width, channels, 1)
            keys += frozen_conv(f"{b}conv1.", width, channels if j == 0 else 4 * width, 1)
            keys += frozen_conv(f"{b}conv2.", width, width, 3)
            keys += frozen_conv(f"{b}conv3.", 4 * width, width, 1)
        channels = 4 * width
    return keys


def pvt_b5(p: str) -> list:
    dims, depths, srs = (64, 128, 320, 512), (3, 6, 40, 3), (8, 4, 2, 1)
    keys = []
    for i, (dim, depth, sr) in enumerate(zip(dims, depths, srs)):
        inp, k = (3, 7) if i == 0 else (dims[i - 1], 3)
        keys += [(f"{p}patch_embed{i + 1}.proj.weight", [dim, inp, k, k]), (f"{p}patch_embed{i + 1}.proj.bias", [dim])]
        keys += ln(f"{p}patch_embed{i + 1}.norm.", dim)
        for j in range(depth):
            b = f"{p}block{i + 1}.{j}."
            keys += ln(f"{b}norm1.", dim) + lin(f"{b}attn.q.", dim, dim) + lin(f"{b}attn.kv.", 2 * dim, dim)
            keys += lin(f"{b}attn.proj.", dim, dim)
            if sr > 1:
                keys += [(f"{b}attn.sr.weight", [dim, dim, sr, sr]), (f"{b}attn.sr.bias", [dim])]
                keys += ln(f"{b}attn.norm.", dim)
            keys += ln(f"{b}norm2.", dim) + lin(f"{b}mlp.fc1.", 4 * dim, dim)
            keys += [(f"{b}mlp.dwconv.dwconv.weight", [4 * dim, 1, 3, 3]), (f"{b}mlp.dwconv.dwconv.bias", [4 * dim])]
            keys += lin(f"{b}mlp.fc2.", dim, 4 * dim)
        keys += ln(f"{p}norm{i + 1}.", dim)
    return keys


def vggish(p: str) -> list:
    keys = []
    for line in (SHARED / "vggish.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        keys.append((p + key, [int(s) for s in shape.strip("[]").split(",")]))
    return keys


def pixel_decoder(p: str, widths: tuple[int, ...]) -> list:
    keys = []
    for i, c in enumerate(reversed(widths[1:])):                     # res5, res4, res3
        keys += [(f"{p}input_proj.{i}.0.weight", [D, c, 1, 1]), (f"{p}input_proj.{i}.0.bias", [D])]
        keys += ln(f"{p}input_proj.{i}.1.", D)
    keys.append((f"{p}transformer.level_embed", [3, D]))
    heads, levels, points = 8, 3, 4
    for j in range(6):
        b = f"{p}transformer.encoder.layers.{j}."
        keys += lin(f"{b}self_attn.sampling_offsets.", heads * levels * points * 2, D)
        keys += lin(f"{b}self_attn.attention_weights.", heads * levels * points, D)
        keys += lin(f"{b}self_attn.value_proj.", D, D) + lin(f"{b}self_attn.output_proj.", D, D)
        keys += ln(f"{b}norm1.", D) + lin(f"{b}linear1.", 1024, D) + lin(f"{b}linear2.", D, 1024) + ln(f"{b}norm2.", D)
    keys += [(f"{p}mask_features.weight", [D, D, 1, 1]), (f"{p}mask_features.bias", [D])]
    keys += [(f"{p}adapter_1.weight", [D, widths[0], 1, 1])] + ln(f"{p}adapter_1.norm.", D)
    keys += [(f"{p}layer_1.weight", [D, D, 3, 3])] + ln(f"{p}layer_1.norm.", D)
    return keys


def fusion(p: str) -> list:
    keys = [(f"{p}audio_pos.weight", [1, AUDIO]), (f"{p}level_embed.weight", [1, D])]
    b = f"{p}b_attn."
    keys += ln(f"{b}layer_norm_v_list.0.", D) + ln(f"{b}layer_norm_a_list.0.", AUDIO)
    a = f"{b}attn_list.0."
    keys += lin(f"{a}v_proj.", D, D) + lin(f"{a}a_proj.", D, AUDIO) + lin(f"{a}values_v_proj.", D, D)
    keys += lin(f"{a}values_a_proj.", D, AUDIO) + lin(f"{a}out_v_proj.", D, D) + lin(f"{a}out_a_proj.", AUDIO, D)
    keys += [(f"{b}gamma_v_list.0", [D]), (f"{b}gamma_a", [AUDIO])]
    return keys


def predictor(p: str, classes: int) -> list:
    keys = []
    for kind, attn in (("self", "self_attn"), ("cross", "multihead_attn")):
        for j in range(9):
            b = f"{p}transformer_{kind}_attention_layers.{j}."
            keys += [(f"{b}{attn}.in_proj_weight", [3 * D, D]), (f"{b}{attn}.in_proj_bias", [3 * D])]
            keys += lin(f"{b}{attn}.out_proj.", D, D) + ln(f"{b}norm.", D)
    for j in range(9):
        b = f"{p}transformer_ffn_layers.{j}."
        keys += lin(f"{b}linear1.", 2048, D) + lin(f"{b}linear2.", D, 2048) + ln(f"{b}norm.", D)
    keys += ln(f"{p}decoder_norm.", D)
    keys += [(f"{p}query_feat.weight", [QUERIES, D]), (f"{p}query_embed.weight", [QUERIES, D]),
             (f"{p}level_embed.weight", [3, D])]
    keys += lin(f"{p}class_embed.", classes + 1, D)
    for j in range(3):
        keys += lin(f"{p}mask_embed.layers.{j}.", D, D)
    return keys


def manifest(setting: str, backbone: str) -> list:
    widths, classes = WIDTHS[backbone], NUM_CLASSES[setting]
    vision = r50 if backbone == "r50" else pvt_b5
    keys = vision("backbone.") + vision("pre_sam_backbone.")
    for i, c in enumerate(widths):
        keys += lin(f"scale_factor_module.{i}.fc1.", c // 16, c) + lin(f"scale_factor_module.{i}.fc2.", c, c // 16)
    keys += vggish("audio_backbone.")
    keys += pixel_decoder("sem_seg_head.pixel_decoder.", widths) + fusion("sem_seg_head.fusion_module.")
    keys += (lin("sem_seg_head.audio_transformation.embeddings.0.", MLP_HIDDEN, AUDIO)
             + lin("sem_seg_head.audio_transformation.embeddings.2.", MLP_HIDDEN, MLP_HIDDEN)
             + lin("sem_seg_head.audio_transformation.embeddings.4.", D, MLP_HIDDEN))
    keys += predictor("sem_seg_head.predictor.", classes)
    keys.append(("criterion.empty_weight", [classes + 1]))
    return keys


def main() -> None:
    for setting in NUM_CLASSES:
        for backbone in WIDTHS:
            rows = manifest(setting, backbone)
            names = [k for k, _ in rows]
            assert len(names) == len(set(names)), "duplicate key"
            header = ("# COMBO state_dict manifest (official detectron2 checkpoint, under 'model'), written by "
                      "tests/combo_keys/derive.py: keys enumerated from the public code's constructors and "
                      "configs (yannqi/COMBO-AVS @cb8af1c, detectron2 v0.6 ResNet); VGGish keys from "
                      "shared/reference/state_dicts/vggish.tsv.\n# key\tshape\tdtype\n")
            text = header + "".join(f"{k}\t{list(s)}\tfloat32\n" for k, s in rows)
            name = f"combo-{setting}-{backbone}"
            (HERE / f"{name}.tsv").write_text(text)
            print(name, len(rows))


if __name__ == "__main__":
    main()
