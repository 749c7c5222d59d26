"""Inference backends behind one small interface: a runner per graph, named numpy arrays in and out.

``open_backend(artifact_dir, manifest, backend)`` returns a :class:`Backend` whose ``runner(role)`` runs one graph
of the artifact ('encoder', 'temporal', 'decoder' or 'full'). ``backend`` is:

* ``onnxruntime``: ONNX Runtime with the best execution provider present (TensorRT, CUDA, else CPU), our custom-op
  library registered when a graph uses ``avs`` ops;
* ``tensorrt``: the artifact's TensorRT engines (tensorrt Python API, cuda-python or pycuda buffers); they must
  have been built for this GPU and TensorRT, else the error says how to rebuild them;
* ``auto``: TensorRT when such engines exist, else ONNX Runtime; the choice and its reason are announced.

``precision`` is 'fp32', 'fp16', 'int8' or 'auto': the fastest precision the artifact was validated for on that
backend (int8, then fp16, then fp32; see :func:`precisions_for`), announced with its measured accuracy. ONNX
Runtime runs fp32 and the Q/DQ graphs of int8; fp16 is TensorRT's (ONNX Runtime's CPU kernels have none).

Heavy imports (onnxruntime, tensorrt, CUDA) happen when a backend is opened, not when this package is imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from runtime.manifest import PRECISIONS, GraphSpec, Manifest, TensorSpec

__all__ = ["BACKENDS", "PRECISION_CHOICES", "STREAMING_ROLES", "BackendError", "Runner", "Backend", "check_feeds",
           "open_backend", "precisions_for", "describe_precision"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISION_CHOICES = ("auto", *PRECISIONS)
FASTEST_FIRST = ("int8", "fp16", "fp32")
STREAMING_ROLES = ("encoder", "temporal", "decoder")
CALIBRATE_COMMAND = "python -m calibration --model-dir {dir} --data DIR"


class BackendError(RuntimeError):
    """A backend that cannot run this artifact here; the message says why and what to do."""


class Runner(Protocol):
    """One graph, ready to run."""
    role: str
    spec: GraphSpec
    inference_time: float  # seconds taken by the last ``infer``

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    """Runners of an artifact's graphs on one inference library, in one precision."""
    name: str
    description: str
    precision: str

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


def precisions_for(manifest: Manifest, backend: str) -> list[str]:
    """The precisions ``backend`` ('onnxruntime' or 'tensorrt') may run for this artifact, fastest first: fp32,
    and each reduced precision whose accuracy check passed for that backend (fp16 engines exported with
    ``--precision fp16`` count for TensorRT: their fp16 check ran at export)."""
    usable = {"fp32"}
    for name, record in manifest.precisions.items():
        if record.passed and backend in record.backends:
            usable.add(name)
    if backend == "tensorrt" and manifest.fp16 is not None:
        usable.add("fp16")
    return [p for p in FASTEST_FIRST if p in usable]


def describe_precision(manifest: Manifest, precision: str) -> str:
    """'int8 (M_J 82.1 -> 81.9, mask agreement 99.3% on 40 held-out clips)' or just the name."""
    record = manifest.precisions.get(precision)
    if record is None:
        return precision
    acc = record.accuracy
    mj = (f"M_J {100 * acc.fp32['M_J']:.1f} -> {100 * acc.reduced['M_J']:.1f}, "
          if "M_J" in acc.fp32 and "M_J" in acc.reduced else "")
    return f"{precision} ({mj}mask agreement {100 * acc.mask_agreement:.1f}% on {acc.clips} held-out clips)"


def _check_onnxruntime_precision(manifest: Manifest, artifact_dir: Path, precision: str) -> None:
    """A precision named explicitly must be one ONNX Runtime can run from this artifact (fp32, or int8 graphs)."""
    if precision == "fp16":
        raise BackendError("fp16 runs on TensorRT only (ONNX Runtime's CPU kernels have no fast fp16); use "
                           "--precision int8 or fp32 here, or build fp16 engines on the GPU with python -m "
                           f"export.build_engine --model {manifest.model.name} --out {artifact_dir} --precision fp16")
    if precision not in ("auto", "fp32") and precision not in manifest.precisions:
        raise BackendError(f"{artifact_dir} has no {precision} graphs; add them with: "
                           + CALIBRATE_COMMAND.format(dir=artifact_dir))


def open_backend(artifact_dir: Path, manifest: Manifest, backend: str = "auto",
                 roles: Sequence[str] = STREAMING_ROLES, say: Callable[[str], None] = print,
                 precision: str = "auto") -> Backend:
    """Open ``backend`` ('auto', 'tensorrt' or 'onnxruntime') for ``roles`` in ``precision``; see the module
    docstring."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    for role in roles:
        manifest.graph(role)
    artifact_dir = Path(artifact_dir)
    if precision not in PRECISION_CHOICES:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    why = ""
    if backend in ("auto", "tensorrt"):
        from runtime.backends.tensorrt import TensorRTBackend, engines_for_this_machine

        wanted = precisions_for(manifest, "tensorrt") if precision == "auto" else [precision]
        if not manifest.engine.built:
            wanted = wanted[-1:]                # one reason is enough: there are no engines at all
        reasons = []
        for candidate in wanted:
            engines, why = engines_for_this_machine(artifact_dir, manifest, roles, candidate)
            if engines:
                built = TensorRTBackend(artifact_dir, manifest, engines, candidate)
                say(f"backend: {built.description}; precision {describe_precision(manifest, candidate)}")
                return built
            reasons.append(f"{candidate}: {why}" if len(wanted) > 1 else why)
        why = "; ".join(reasons)
        if backend == "tensorrt":
            flag = "" if precision in ("auto", "fp32") else f" --precision {precision}"
            raise BackendError(f"--backend tensorrt: {why}. Build engines on this device with: python -m "
                               f"export.build_engine --model {manifest.model.name} --out {artifact_dir} --engine"
                               + flag)
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    _check_onnxruntime_precision(manifest, artifact_dir, precision)
    chosen = precisions_for(manifest, "onnxruntime")[0] if precision == "auto" else precision
    record = manifest.precisions.get(chosen)
    if record is not None and not record.passed:
        say(f"WARNING: {chosen} of {artifact_dir} failed its accuracy check ({describe_precision(manifest, chosen)}, "
            f"bounds {record.bounds}); running it because you asked for it")
    built = OnnxRuntimeBackend(artifact_dir, manifest, roles, precision=chosen)
    how = "fastest validated for ONNX Runtime" if precision == "auto" else "as asked"
    say(f"backend: {built.description}" + (f"; not TensorRT: {why}" if backend == "auto" else "")
        + f"; precision {describe_precision(manifest, chosen)} ({how})")
    return built
