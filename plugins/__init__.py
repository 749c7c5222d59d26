"""Native parts of avs-edge: where the built libraries are, and what the last build made of each part.

``python -m plugins.build`` compiles ``plugins/`` with CMake into ``build/native/`` and copies the libraries here,
to ``plugins/lib/``, with ``build_status.json`` beside them. Importing this package loads nothing and never imports
torch (the runtime uses it on machines without torch).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

__all__ = ["BUILD_COMMAND", "LIB_DIR", "PARTS", "build_status", "cuda_library_path", "logic_library_path",
           "ort_library_path", "trt_plugin_path"]

LIB_DIR = Path(__file__).resolve().parent / "lib"
STATUS_FILE = LIB_DIR / "build_status.json"
BUILD_COMMAND = "python -m plugins.build"


class Part(NamedTuple):
    """One library the native build may produce."""

    label: str
    library: str


#: Part name (as reported by CMake's ``avs_report_part``) -> label and library file name.
PARTS = {
    "ort_ops": Part("ONNX Runtime custom ops", "libavs_ort_ops.so"),
    "scan_cuda": Part("CUDA kernels", "libavs_scan_cuda.so"),
    "trt_plugin": Part("TensorRT plugin", "libavs_trt_plugins.so"),
    "plugin_logic": Part("TensorRT plugin logic", "libavs_scan_plugin_logic.so"),
}


def build_status() -> dict[str, dict]:
    """Part name -> ``{"label", "status", "reason", "library"}`` from the last build.

    ``status`` is ``"built"`` or ``"skipped"`` (``reason`` says why); every part is ``"not built"`` before the first
    build. ``library`` is the file name in ``LIB_DIR`` of a built part, else None.
    """
    if not STATUS_FILE.is_file():
        return {name: {"label": part.label, "status": "not built", "reason": f"run `{BUILD_COMMAND}`",
                       "library": None} for name, part in PARTS.items()}
    return json.loads(STATUS_FILE.read_text())["parts"]


def _library_path(name: str) -> str:
    part = PARTS[name]
    path = LIB_DIR / part.library
    if path.is_file():
        return str(path)
    entry = build_status().get(name, {})
    why = entry.get("reason") or entry.get("status") or "not built"
    raise FileNotFoundError(f"{part.label}: {path} does not exist ({why}); build it with `{BUILD_COMMAND}`")


def ort_library_path() -> str:
    """``libavs_ort_ops.so``, for ``onnxruntime.SessionOptions.register_custom_ops_library``."""
    return _library_path("ort_ops")


def cuda_library_path() -> str:
    """``libavs_scan_cuda.so``: the SelectiveScan CUDA launcher (built where nvcc exists)."""
    return _library_path("scan_cuda")


def trt_plugin_path() -> str:
    """``libavs_trt_plugins.so``: the TensorRT plugin library (built where TensorRT's headers exist)."""
    return _library_path("trt_plugin")


def logic_library_path() -> str:
    """``libavs_scan_plugin_logic.so``: the TensorRT plugin's host logic, free of TensorRT (built on every machine)."""
    return _library_path("plugin_logic")
