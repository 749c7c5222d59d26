"""Inference backends behind one small interface: a runner per graph, named numpy arrays in and out.

``open_backend(artifact_dir, manifest, backend)`` returns a :class:`Backend` whose ``runner(role)`` runs one graph
of the artifact ('encoder', 'temporal', 'decoder' or 'full'). ``backend`` is:

* ``onnxruntime``: ONNX Runtime with the best execution provider present (TensorRT, CUDA, else CPU), our custom-op
  library registered when a graph uses ``avs`` ops;
* ``tensorrt``: the artifact's TensorRT engines (tensorrt Python API, cuda-python or pycuda buffers); they must
  have been built for this GPU and TensorRT, else the error says how to rebuild them;
* ``auto``: TensorRT when such engines exist, else ONNX Runtime; the choice and its reason are announced.

Heavy imports (onnxruntime, tensorrt, CUDA) happen when a backend is opened, not when this package is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.manifest import GraphSpec, Manifest, TensorSpec

__all__ = ["BACKENDS", "STREAMING_ROLES", "BackendError", "Runner", "Backend", "check_feeds", "open_backend"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")
STREAMING_ROLES = ("encoder", "temporal", "decoder")


class BackendError(RuntimeError):
    """A backend that cannot run this artifact here; the message says why and what to do."""


class Runner(Protocol):
    """One graph, ready to run."""
    role: str
    spec: GraphSpec
    inference_time: float  # seconds taken by the last ``infer``

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    """Runners of an artifact's graphs on one inference library."""
    name: str
    description: str

    def runner(self, role: str) -> Runner: ...

    def close(self) -> None: ...


def _shape_ok(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    return len(spec.shape) == len(shape) and all(isinstance(d, str) or d == s for d, s in zip(spec.shape, shape))


def check_feeds(spec: GraphSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` as contiguous arrays of the graph's dtypes; a missing, extra or misshapen input raises ValueError."""
    expected = {t.name: t for t in spec.inputs}
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        raise ValueError(f"{spec.role} graph inputs are {', '.join(expected)}; "
                         + (f"missing {', '.join(missing)}" if missing else "")
                         + ("; " if missing and extra else "") + (f"unexpected {', '.join(extra)}" if extra else ""))
    out = {}
    for name, tensor in expected.items():
        value = np.asarray(feeds[name])
        if not _shape_ok(tensor, value.shape):
            raise ValueError(f"{spec.role} graph input {name!r} must have shape {tensor.shape}; "
                             f"got {list(value.shape)}")
        out[name] = np.ascontiguousarray(value, dtype=np.dtype(tensor.dtype))
    return out


def open_backend(artifact_dir: Path, manifest: Manifest, backend: str = "auto",
                 roles: Sequence[str] = STREAMING_ROLES, say: Callable[[str], None] = print) -> Backend:
    """Open ``backend`` ('auto', 'tensorrt' or 'onnxruntime') for ``roles``; see the module docstring."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for role in roles:
        manifest.graph(role)
    artifact_dir = Path(artifact_dir)
    if backend in ("auto", "tensorrt"):
        from runtime.backends.tensorrt import TensorRTBackend, engines_for_this_machine

        engines, why = engines_for_this_machine(artifact_dir, manifest, roles)
        if engines:
            built = TensorRTBackend(artifact_dir, manifest, engines)
            say(f"backend: {built.description}")
            return built
        if backend == "tensorrt":
            raise BackendError(f"--backend tensorrt: {why}. Build engines on this device with: python -m "
                               f"export.build_engine --model {manifest.model.name} --out {artifact_dir} --engine")
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    built = OnnxRuntimeBackend(artifact_dir, manifest, roles)
    say(f"backend: {built.description}" + (f"; not TensorRT: {why}" if backend == "auto" else ""))
    return built
