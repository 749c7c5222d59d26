"""Every registered model's state_dict equals the official checkpoint's manifest: keys, shapes, dtypes, buffers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from export.models import list_models, model_builder, pretrained_cfg

OFFICIAL_MODELS = ["selm-avss-pvt", "selm-avss-r50", "selm-ms3-pvt", "selm-ms3-r50", "selm-s4-pvt", "selm-s4-r50",
                   "vggish"]
TEST_MODELS = ["selm-test", "vggish-test"]
DEMO_MODELS = ["selm-s4-demo", "vggish-demo"]     # trained here (python -m export.train_demo), weights shipped
SDAVS_MODELS = [f"sdavs-{s}-{b}" for s in ("s4", "ms3", "avss") for b in ("swinb", "pvt")] + ["sdavs-test"]
SDAVS_DEMO = ["sdavs-s4-demo", "vggish-demo-map"]  # python -m export.train_sdavs_demo; vggish-demo-map = vggish-demo
AUDIO_MAPS = ["vggish-map", "vggish-test-map"]    # VGGish conv-map encoders of SDAVS: VGGish's own weight files
AVS_MAMBA_MODELS = [f"avs-mamba-{s}-{b}" for s in ("s4", "ms3", "avss") for b in ("r50", "pvt")] + ["avs-mamba-test"]
COMBO_MODELS = [f"combo-{s}-{b}" for s in ("s4", "ms3", "avss") for b in ("r50", "pvt")] + ["combo-test"]
COMBO_DEMO = ["combo-s4-demo"]                   # python -m export.train_combo_demo


def _manifest_dir() -> Path:
    root = Path(os.environ.get("AVS_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
    found = root / "reference" / "state_dicts"
    if not found.is_dir():
        pytest.fail(f"state_dict manifests not found in {found}; set AVS_SHARED_DIR to the shared/ directory")
    return found


def _read_manifest(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        rows[key] = (tuple(json.loads(shape)), dtype)
    return rows


def test_registry_holds_the_official_models_and_the_test_variants():
    assert list_models() == sorted(OFFICIAL_MODELS + TEST_MODELS + DEMO_MODELS + SDAVS_MODELS + SDAVS_DEMO
                                   + AUDIO_MAPS + AVS_MAMBA_MODELS + COMBO_MODELS + COMBO_DEMO)
    assert [n for n in list_models() if pretrained_cfg(n).file] == sorted(OFFICIAL_MODELS + ["vggish-map", "combo-s4-r50",
                                                                                   "combo-s4-pvt"])
    assert [n for n in list_models() if pretrained_cfg(n).bundled] == sorted(DEMO_MODELS + SDAVS_DEMO + COMBO_DEMO)
    assert pretrained_cfg("vggish-map").file == pretrained_cfg("vggish").file


def test_vggish_map_has_the_official_vggish_state_dict():
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in model_builder("vggish-map")().state_dict().items()}
    assert ours == {k: shape for k, (shape, _) in _read_manifest(_manifest_dir() / "vggish.tsv").items()}


@pytest.mark.parametrize("name", OFFICIAL_MODELS)
def test_state_dict_equals_official_manifest(name):
    with torch.device("meta"):
        model = model_builder(name)()
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    ref = _read_manifest(_manifest_dir() / f"{name}.tsv")
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    differ = sorted(f"{k}: ours {ours[k]} official {ref[k]}" for k in set(ref) & set(ours) if ours[k] != ref[k])
    assert not (missing or extra or differ), (f"{name}: {len(missing)} missing {missing[:5]}, "
                                              f"{len(extra)} extra {extra[:5]}, {len(differ)} differ {differ[:5]}")
    assert len(ours) == len(ref) > 0
