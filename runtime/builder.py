"""Artifacts on demand: load an artifact directory, or build it through the installed builder.

``runtime`` never imports ``export`` (a Jetson may have only the runtime installed). The builder is found through
the package entry point ``avs_edge.builders`` / ``artifact`` (``export.build_engine:build_artifact``, declared in
pyproject.toml); when it is not installed, or PyTorch is missing, :class:`BuilderMissing` names the commands to
run instead.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable

from runtime.integrity import cache_dir

__all__ = ["ArtifactError", "BuilderMissing", "demo_cache_dir", "ensure_artifacts", "find_builder"]

BUILDER_GROUP = "avs_edge.builders"
BUILDER_NAME = "artifact"


class ArtifactError(RuntimeError):
    """An artifact that is missing, stale or could not be built; the message names the fix."""


class BuilderMissing(ArtifactError):
    """The artifact builder (the ``export`` extra) is not installed here."""


def demo_cache_dir() -> Path:
    """Where ``avs-stream --demo`` keeps its artifact and clip: ``$AVS_EDGE_CACHE/demo`` or
    ``~/.cache/avs-edge/demo``."""
    return cache_dir() / "demo"


def _build_command(model: str, directory: Path) -> str:
    return f"python -m export.build_engine --model {model} --out {directory}"


def _install_hint(model: str, directory: Path) -> str:
    return (f"install the export extra (pip install -e '.[export]' in the avs-edge checkout) or build the artifact "
            f"on another machine with: {_build_command(model, directory)}, then pass --model-dir")


def find_builder(model: str, directory: Path) -> Callable[..., Path]:
    """The installed ``build_artifact`` function, or :class:`BuilderMissing` with the commands to run instead."""
    fix = _install_hint(model, directory)
    found = [ep for ep in importlib.metadata.entry_points(group=BUILDER_GROUP) if ep.name == BUILDER_NAME]
    if not found:
        raise BuilderMissing(f"no artifact builder is installed (entry point {BUILDER_GROUP}:{BUILDER_NAME}); {fix}")
    try:
        return found[0].load()
    except (ImportError, AttributeError) as exc:
        raise BuilderMissing(f"the artifact builder {found[0].value} cannot be loaded ({exc}); {fix}") from None


def ensure_artifacts(directory: Path, model: str, say: Callable[[str], None] = print) -> Path:
    """``directory`` holding a loadable artifact of ``model``, built there first if it is missing or stale."""
    from runtime.manifest import ManifestError, load_manifest

    directory = Path(directory)
    try:
        load_manifest(directory)
        return directory
    except ManifestError as exc:
        reason = str(exc).split(";")[0]
    build = find_builder(model, directory)
    say(f"building the {model} artifact in {directory} (first use; a few minutes): {reason}")
    try:
        build(model, directory, say=say)
    except ImportError as exc:  # the builder loaded, but PyTorch or ONNX is missing
        raise BuilderMissing(f"building the {model} artifact needs {exc.name or exc}; "
                             f"{_install_hint(model, directory)}") from None
    except Exception as exc:  # noqa: BLE001  (any failure of the builder is this one fault)
        raise ArtifactError(f"building the {model} artifact failed: {exc}; to see every step run: "
                            f"{_build_command(model, directory)}") from exc
    try:
        load_manifest(directory)
    except ManifestError as exc:
        raise ArtifactError(f"the freshly built artifact does not load: {exc}") from None
    return directory
