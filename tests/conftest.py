"""Shared fixtures: the reference material beside the checkout, and one exported test artifact per session."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_MODEL = "selm-s4-r50"


def keyed_cache_dir(request, name: str, sources: list[Path]) -> Path:
    """``<pytest cache>/avs-artifacts/<name>-<sha256 of sources>``; older ``<name>-*`` directories are removed, so
    an artifact is rebuilt exactly when the code that makes it changes."""
    key = hashlib.sha256()
    for path in sources:
        key.update(path.read_bytes())
    root = Path(request.config.cache.mkdir("avs-artifacts"))
    directory = root / f"{name}-{key.hexdigest()[:12]}"
    for stale in root.glob(f"{name}-*"):
        if stale != directory:
            shutil.rmtree(stale, ignore_errors=True)
    return directory


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (CI has it too), or ``$AVS_SHARED_DIR``."""
    path = Path(os.environ.get("AVS_SHARED_DIR", REPO.parent / "shared"))
    if not (path / "reference" / "state_dicts").is_dir():
        pytest.fail(f"reference material not found at {path}: set AVS_SHARED_DIR to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def artifact(request) -> Path:
    """``python -m export.build_engine --model selm-s4-r50`` (random weights), built once and kept in pytest's cache
    under a key of the export code, so later sessions reuse it until that code changes (about 3 minutes on 2 cores).
    ``$AVS_TEST_ARTIFACT`` names an existing artifact directory to use instead."""
    from runtime.cli import ensure_artifacts

    if os.environ.get("AVS_TEST_ARTIFACT"):
        return Path(os.environ["AVS_TEST_ARTIFACT"])
    sources = sorted((REPO / "export").rglob("*.py")) + [REPO / "runtime" / "manifest.py"]
    return ensure_artifacts(keyed_cache_dir(request, ARTIFACT_MODEL, sources), ARTIFACT_MODEL)


def tiny_variant_artifact(request, model: str) -> Path:
    """A tiny registered variant (random weights) exported once per change of the export/runtime code."""
    from export.build_engine import build_artifact

    directory = keyed_cache_dir(request, model,
                                sorted((REPO / "export").rglob("*.py")) + sorted((REPO / "runtime").glob("*.py")))
    if not (directory / "manifest.json").is_file():
        build_artifact(model, directory, say=lambda line: None)
    return directory


@pytest.fixture(scope="session")
def tiny_artifact(request) -> Path:
    """``selm-test`` (the tiny registered test variant, random weights): a real artifact in seconds, for tests of
    the runtime's behaviour rather than of SelM's numerics."""
    return tiny_variant_artifact(request, "selm-test")


@pytest.fixture(scope="session")
def avs_mamba_artifact(request) -> Path:
    """``avs-mamba-test`` (its scans are plugin nodes); about a minute on 2 cores."""
    return tiny_variant_artifact(request, "avs-mamba-test")


@pytest.fixture(scope="session")
def combo_artifact(request) -> Path:
    """``combo-test`` (a Maskige input, a one-frame window); about a minute on 2 cores."""
    return tiny_variant_artifact(request, "combo-test")


@pytest.fixture(scope="session")
def vggish_file(tmp_path_factory) -> Path:
    """``vggish-test`` weights (seed 7) in a file, for --vggish of models with VGGish inside (AVS-Mamba, COMBO)."""
    import warnings

    import torch

    from export.models import create_model

    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        weights = create_model("vggish-test").state_dict()
    path = tmp_path_factory.mktemp("weights") / "vggish-test.pth"
    torch.save(weights, path)
    return path


@pytest.fixture(scope="session")
def int8_demo(request) -> Path:
    """``python -m export.build_engine --model selm-s4-demo --precision int8 --calibration synth`` (the README's
    INT8 command: shipped trained weights, default calibration on generated clips), once per change of the code
    it runs; about 3 minutes on 2 cores."""
    from export.build_engine import build_artifact

    sources = [path for folder in ("export", "runtime", "calibration")
               for path in sorted((REPO / folder).rglob("*.py"))]
    directory = keyed_cache_dir(request, "selm-s4-demo-int8", sources)
    if not (directory / "manifest.json").is_file():
        build_artifact("selm-s4-demo", directory, precision="int8", calibration="synth", engine=False,
                       say=lambda line: None)
    return directory
