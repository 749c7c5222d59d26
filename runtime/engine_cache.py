"""TensorRT engines on disk and the TensorRT they need: the engine key, the keyed cache, the TensorRT import.

An engine is a raw TensorRT plan (``<graph>.<precision>.engine``, loadable by ``trtexec --loadEngine``) with a
sidecar ``<file>.json`` holding the :class:`EngineKey` it was built under: graph sha256, TensorRT version, GPU
name and compute capability, precision and plugin-library sha256. A matching engine is reused; any mismatch
(another TensorRT, another GPU, a changed graph or plugin, a truncated plan) is rebuilt with a message saying why.
The builder (``export.engine``) and the runtime (``runtime.backends.tensorrt``) both decide through this module.

TensorRT is imported lazily: ``tensorrt`` (JetPack / desktop TensorRT) first, then ``tensorrt_rtx``.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

from runtime.integrity import file_sha256

__all__ = ["TENSORRT_MODULES", "EngineCache", "EngineKey", "graph_sha256", "import_tensorrt",
           "tensorrt_version", "write_atomic"]

TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx")


def graph_sha256(onnx_path: os.PathLike | str) -> str:
    """sha256 over an ONNX file and its external-data file (``<file>.data``) when there is one."""
    digest = hashlib.sha256()
    for part in (Path(onnx_path), Path(f"{onnx_path}.data")):
        if part.is_file():
            digest.update(file_sha256(part).encode())
    return digest.hexdigest()


def import_tensorrt(preferred: Sequence[str] = TENSORRT_MODULES) -> tuple[Optional[ModuleType], str]:
    """The first importable TensorRT Python module: ``(module, "")`` or ``(None, why)``."""
    reasons = []
    for name in preferred:
        try:
            return importlib.import_module(name), ""
        except ImportError as exc:
            reasons.append(f"{name}: {exc}")
    return None, "TensorRT's Python package is not installed (" + "; ".join(reasons) + ")"


def tensorrt_version(trt: ModuleType) -> str:
    """'tensorrt 10.3.0' or 'tensorrt_rtx 1.7.1.116': product and version, as the cache key records it."""
    return f"{trt.__name__} {trt.__version__}"


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; an engine is reused only when every field matches."""
    graph_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    plugin_sha256: str

    def mismatches(self, other: "EngineKey") -> list[str]:
        """Human-readable differences, ``other`` being the key the existing engine was built under."""
        labels = {"graph_sha256": "the ONNX graph changed", "plugin_sha256": "the plugin library changed"}
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(labels.get(f.name, f"{f.name.replace('_', ' ')} was {theirs!r}, now {mine!r}"))
        return out


class EngineCache:
    """Raw plans plus ``.json`` key sidecars in one directory."""

    def __init__(self, directory: os.PathLike | str):
        self.directory = Path(directory)

    def engine_path(self, graph: str, precision: str) -> Path:
        """Where the engine for ``graph`` at ``precision`` lives."""
        return self.directory / f"{graph}.{precision}.engine"

    @staticmethod
    def key_path(engine: Path) -> Path:
        return engine.with_name(engine.name + ".json")

    def check(self, engine: Path, key: EngineKey) -> tuple[bool, str]:
        """``(True, "")`` when ``engine`` exists, is intact and was built under ``key``; else ``(False, why)``."""
        sidecar = self.key_path(engine)
        if not engine.is_file():
            return False, "no cached engine"
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            stored = EngineKey(**record["key"])
            plan_sha = record["plan_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return False, f"its key file {sidecar.name} is missing or unreadable ({exc.__class__.__name__})"
        diffs = key.mismatches(stored)
        if diffs:
            return False, "; ".join(diffs)
        if file_sha256(engine) != plan_sha:
            return False, "the plan file is damaged (sha256 differs from the one recorded at build time)"
        return True, ""

    def store(self, engine: Path, plan: bytes, key: EngineKey) -> None:
        """Write the plan and then its sidecar, each atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(engine, plan)
        record = {"key": asdict(key), "plan_sha256": hashlib.sha256(plan).hexdigest()}
        write_atomic(self.key_path(engine), (json.dumps(record, indent=2) + "\n").encode())

    def get_or_build(self, graph: str, key: EngineKey, build: Callable[[], bytes],
                     say: Callable[[str], None] = print) -> tuple[Path, bool]:
        """The engine for ``graph``: reused if its key matches, else made by ``build()``; ``(path, built)``."""
        engine = self.engine_path(graph, key.precision)
        ok, why = self.check(engine, key)
        if ok:
            say(f"engine {engine.name}: cached, key matches; reusing it")
            return engine, False
        verb = "building" if why == "no cached engine" else "rebuilding"
        say(f"engine {engine.name}: {verb} ({why})")
        self.store(engine, build(), key)
        return engine, True


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
