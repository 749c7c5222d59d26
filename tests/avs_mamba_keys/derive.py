"""Write the AVS-Mamba state_dict manifests (``<variant>.tsv``) beside this file.

The keys and shapes are enumerated here from a reading of the public code's constructors (github.com/SitongGong/
AVS-Mamba history: ``model/compformer_ablation.py`` @17ec483 ``CompFormer``, ``model/cross_scale_temporal_v2.py``,
``model/cross_modal_mamba.py``, ``model/mamba_cmfpn_.py``, ``model/mamba_3d_.py`` @91c4fc3), independently of
``export/models/avs_mamba.py``. The backbones' keys are not in that code as source (``B2_ResNet`` and VGGish exist
only as .pyc; ``pvt_v2_b5`` is AVSBench's): they are taken from the SelM checkpoint manifests in
``shared/reference/state_dicts`` (``resnet.*`` / ``encoder_backbone.*`` without SelM's ``DAM_Fusion*``; VGGish's
``vggish.tsv``), renamed to ``vision_backbone.*`` / ``audio_backbone.*``.
Run: ``python tests/avs_mamba_keys/derive.py``.
"""
from __future__ import annotations

import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "reference" / "state_dicts"
D, EXPAND, N, D_CONV, D_CONV_1D = 256, 2, 16, 3, 4
DI, R = EXPAND * D, math.ceil(D / 16)
VARIANTS = {"s4": 1, "ms3": 1, "avss": 71}
WIDTHS = {"r50": (256, 512, 1024, 2048), "pvt": (64, 128, 320, 512)}


def ssm(prefix: str, k: int) -> list[tuple[str, list[int]]]:
    return [(f"{prefix}x_proj_weight", [k, R + 2 * N, DI]), (f"{prefix}dt_projs_weight", [k, DI, R]),
            (f"{prefix}dt_projs_bias", [k, DI]), (f"{prefix}A_logs", [k * DI, N]), (f"{prefix}Ds", [k * DI])]


def ln(prefix: str, n: int = D) -> list[tuple[str, list[int]]]:
    return [(f"{prefix}weight", [n]), (f"{prefix}bias", [n])]


def post(prefix: str) -> list[tuple[str, list[int]]]:
    return ln(f"{prefix}out_norm.", DI) + [(f"{prefix}out_proj.weight", [D, DI])]


def vmamba(p: str) -> list:      # VMamba_Block (K=4) / TemporalMambaBlock, Mamba3D (K=8, conv3d)
    return ([(f"{p}in_proj.weight", [2 * DI, D]), (f"{p}conv2d.weight", [DI, 1, D_CONV, D_CONV]),
             (f"{p}conv2d.bias", [DI])] + ssm(p, 4) + post(p))


def temporal(p: str) -> list:
    return ([(f"{p}in_proj.weight", [2 * DI, D]), (f"{p}conv3d.weight", [DI, 1, 1, D_CONV, D_CONV]),
             (f"{p}conv3d.bias", [DI])] + ssm(p, 8) + post(p))


def fusion(p: str, a2v: bool) -> list:   # AudioVisionFusion + Vision_to_Audio_Fusion / Audio_to_Vision_Fusion
    inner = f"{p}{'audio_to_vision_layer' if a2v else 'vision_to_audio_layer'}."
    vis_out, aud_out = (2 * DI, DI) if a2v else (DI, 2 * DI)
    return (ln(f"{p}norm_v.") + ln(f"{p}norm_a.") +
            [(f"{inner}in_proj_vis.weight", [vis_out, D]), (f"{inner}conv2d.weight", [DI, 1, D_CONV, D_CONV]),
             (f"{inner}conv2d.bias", [DI]), (f"{inner}in_proj_audio.weight", [aud_out, D]),
             (f"{inner}conv1d.weight", [DI, 1, D_CONV_1D]), (f"{inner}conv1d.bias", [DI])]
            + ssm(inner, 4) + post(inner))


def head_keys(backbone: str, classes: int) -> list:
    keys = [("audio_proj.weight", [D, 128]), ("audio_proj.bias", [D])]
    for i in range(2):
        p = f"mamba_encoder.{i}."
        keys += ln(f"{p}ln_l.") + vmamba(f"{p}mamba_block.")
        keys += [(f"{p}mixffn.fc1.weight", [4 * D, D]), (f"{p}mixffn.fc1.bias", [4 * D]),
                 (f"{p}mixffn.fc2.weight", [D, 4 * D]), (f"{p}mixffn.fc2.bias", [D]),
                 (f"{p}mixffn.dwconv.weight", [4 * D, 1, 3, 3]), (f"{p}mixffn.dwconv.bias", [4 * D])]
        keys += ln(f"{p}mixffn.norm.") + ln(f"{p}norm2.") + ln(f"{p}norm3.") + temporal(f"{p}temporal_mamba.")
    for layer in range(2):
        for scale in range(3):
            for level in range(2):
                keys += fusion(f"mamba_decoder.{layer}.{scale}.{level}.", a2v=False)
    for i, c in enumerate(WIDTHS[backbone]):
        keys += [(f"input_proj.{i}.0.weight", [D, c, 1, 1]), (f"input_proj.{i}.0.bias", [D])] + ln(f"input_proj.{i}.1.")
    for i in range(1, 5):
        keys += [(f"cmfpn.adapter_{i}.weight", [D, D, 1, 1]), (f"cmfpn.layer_{i}.weight", [D, D, 3, 3])]
    keys += [("cmfpn.mask_features.weight", [D, D, 3, 3]), ("cmfpn.mask_features.bias", [D])]
    for j in range(4):
        keys += ln(f"cmfpn.self_attns.{j}.ln_l.") + temporal(f"cmfpn.self_attns.{j}.mamba_block.")
        keys += fusion(f"cmfpn.cross_attns.{j}.", a2v=True)
    for i, (a, b) in enumerate(((1, 2048), (2048, 2048), (2048, D))):
        keys += [(f"mlp.layers.{i}.weight", [b, a, 1, 1]), (f"mlp.layers.{i}.bias", [b])]
    keys += [("fc.0.weight", [128, D, 3, 3]), ("fc.0.bias", [128]), ("fc.2.weight", [32, 128, 3, 3]),
             ("fc.2.bias", [32]), ("fc.4.weight", [classes, 32, 1, 1])]
    return [(k, s, "float32") for k, s in keys]


def shared_rows(file: str, old: str, new: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in (SHARED / file).read_text().splitlines():
        if line.startswith("#") or not line.startswith(old) or ".DAM_Fusion" in line:
            continue
        key, shape, dtype = line.split("\t")
        rows.append((new + key[len(old):], shape, dtype))
    return rows


def main() -> None:
    for setting, classes in VARIANTS.items():
        for backbone in WIDTHS:
            vision = (shared_rows("selm-s4-r50.tsv", "resnet.", "vision_backbone.") if backbone == "r50" else
                      shared_rows("selm-s4-pvt.tsv", "encoder_backbone.", "vision_backbone."))
            rows = shared_rows("vggish.tsv", "", "audio_backbone.") + vision
            rows += [(k, str(s).replace(" ", "").replace(",", ", "), t) for k, s, t in head_keys(backbone, classes)]
            header = ("# AVS-Mamba state_dict manifest, written by tests/avs_mamba_keys/derive.py: keys enumerated "
                      "from the public code's constructors (SitongGong/AVS-Mamba @91c4fc3/@17ec483); backbone and "
                      "VGGish keys from shared/reference/state_dicts (SelM / torchvggish manifests), renamed.\n"
                      "# key\tshape\tdtype\n")
            text = header + "".join(f"{k}\t{s}\t{t}\n" for k, s, t in rows)
            (HERE / f"avs-mamba-{setting}-{backbone}.tsv").write_text(text)


if __name__ == "__main__":
    main()
