"""ONNX Runtime backend: one InferenceSession per graph, best execution provider present, our custom ops when needed.

Providers, in order of preference when ONNX Runtime has them: TensorRT (engines cached in
``<artifact>/ort_trt_cache``; the first run builds them and can take minutes, which is announced), CUDA, CPU.
A graph that imports the ``avs`` operator domain (``avs::SelectiveScan``, exported with ``--scan plugin``) gets
``plugins.ort_library_path()`` registered; when that library was not built the error names
``python -m plugins.build``. Intra-op threads do not spin while idle: spinning would take the cores that the
capture, audio and video-encoding threads of a live pipeline need. The ``onnx`` package is not needed: the
operator domains are read from the model file's header with a minimal protobuf reader.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from plugins.scan_contract import DOMAIN as CUSTOM_DOMAIN
from runtime.backends import BackendError, check_feeds
from runtime.manifest import GraphSpec, Manifest, ManifestError

__all__ = ["CUSTOM_DOMAIN", "onnx_opset_domains", "choose_providers", "session_options", "OrtRunner",
           "OnnxRuntimeBackend"]

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_MODEL_OPSET_IMPORT = 8  # ModelProto.opset_import
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2  # OperatorSetIdProto fields


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; LEN values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def onnx_opset_domains(path: Path) -> dict[str, int]:
    """Operator domains an ONNX model imports and their versions (``""`` is the default ONNX domain)."""
    try:
        data = Path(path).read_bytes()
        domains = {}
        for number, wire, value in _fields(data):
            if number == _MODEL_OPSET_IMPORT and wire == 2:
                entry = {n: v for n, _, v in _fields(value)}
                domains[bytes(entry.get(_OPSET_DOMAIN, b"")).decode()] = int(entry.get(_OPSET_VERSION, 0))
        return domains
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path} is not a readable ONNX model ({exc})") from None


def choose_providers(available: Sequence[str], uses_custom_ops: bool) -> list[str]:
    """Providers to ask for, best first. Graphs with our CPU custom op skip TensorRT (it would need the plugin)."""
    wanted = [p for p in PROVIDER_PREFERENCE if p in available]
    if uses_custom_ops:
        wanted = [p for p in wanted if p != "TensorrtExecutionProvider"]
    return wanted or ["CPUExecutionProvider"]


def _ort_message(exc: Exception) -> str:
    """ONNX Runtime's error without its C++ source location (``/onnxruntime_src/...cc:256 Class::Method(...)``)."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return re.sub(r"/onnxruntime_src/\S+ \S+\(.*?\) ", "", text)


def _custom_op_library() -> str:
    try:
        import plugins

        return plugins.ort_library_path()
    except (ImportError, FileNotFoundError) as exc:
        raise BackendError(f"this artifact's graphs use avs custom ops, but our ONNX Runtime op library is not "
                           f"available: {exc}") from None


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def session_options(uses_custom_ops: bool) -> ort.SessionOptions:
    """The runtime's session options: quiet, no spinning threads; a graph with our ops gets the custom-op library
    and no CPU memory arena (AVS-Mamba's long-scan graphs: the arena kept 4.5 GB at peak where 2.7 GB are used,
    at the same speed, measured by benchmarks/avs_mamba.py's run of the full graph)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if uses_custom_ops:
        options.register_custom_ops_library(_custom_op_library())
        options.enable_cpu_mem_arena = False
    return options


def check_declared_tensors(spec: GraphSpec, session, file: str) -> None:
    """The manifest's inputs and outputs must be the loaded graph's (names, dtypes, static dims), or
    :class:`ManifestError`: a mismatch is a broken artifact, found before warm-up rather than mid-run."""
    problems = []
    for kind, declared, actual in (("input", spec.inputs, session.get_inputs()),
                                   ("output", spec.outputs, session.get_outputs())):
        graph = {a.name: a for a in actual}
        if sorted(graph) != sorted(t.name for t in declared):
            problems.append(f"{kind}s are {sorted(graph)}, the manifest declares {sorted(t.name for t in declared)}")
            continue
        for tensor in declared:
            real = graph[tensor.name]
            dtype = _ORT_DTYPES.get(real.type, real.type)
            dims = list(real.shape)
            fixed = len(dims) == len(tensor.shape) and all(
                not isinstance(d, int) or not isinstance(r, int) or d == r for d, r in zip(tensor.shape, dims))
            if dtype != tensor.dtype or not fixed:
                problems.append(f"{kind} {tensor.name!r} is {dtype} {dims}, the manifest declares "
                                f"{tensor.dtype} {tensor.shape}")
    if problems:
        raise ManifestError(f"{file} does not match its manifest entry ({spec.role} graph): " + "; ".join(problems)
                            + "; re-export the artifact with python -m export.build_engine")


class OrtRunner:
    """One graph in an InferenceSession."""

    def __init__(self, artifact_dir: Path, spec: GraphSpec, providers: Optional[Sequence[str]] = None,
                 precision: str = "fp32"):
        self.role, self.spec = spec.role, spec
        self.inference_time = 0.0
        path = Path(artifact_dir) / spec.file
        custom = CUSTOM_DOMAIN in onnx_opset_domains(path)
        options = session_options(custom)
        chosen = list(providers) if providers else choose_providers(ort.get_available_providers(), custom)
        provider_args = [self._provider_options(p, artifact_dir, precision) for p in chosen]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen, provider_options=provider_args)
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise BackendError(f"ONNX Runtime cannot load {path.name}: {_ort_message(exc)}") from None
        check_declared_tensors(spec, self.session, path.name)
        self.providers = self.session.get_providers()
        self.uses_custom_ops = custom
        self._outputs = [o.name for o in self.session.get_outputs()]

    @staticmethod
    def _provider_options(provider: str, artifact_dir: Path, precision: str) -> dict:
        if provider != "TensorrtExecutionProvider":
            return {}
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(Path(artifact_dir) / "ort_trt_cache"),
                "trt_fp16_enable": str(precision == "fp16"), "trt_int8_enable": str(precision == "int8")}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on named inputs (checked against the manifest); named outputs."""
        checked = check_feeds(self.spec, feeds)
        start = time.perf_counter()
        values = self.session.run(self._outputs, checked)
        self.inference_time = time.perf_counter() - start
        return dict(zip(self._outputs, values))


class OnnxRuntimeBackend:
    """ONNX Runtime sessions for the requested graphs of an artifact."""
    name = "onnxruntime"

    def __init__(self, artifact_dir: Path, manifest: Manifest, roles: Sequence[str],
                 providers: Optional[Sequence[str]] = None, precision: str = "fp32",
                 graphs: Optional[dict[str, GraphSpec]] = None):
        """``precision`` 'int8' runs the artifact's Q/DQ graphs; ``graphs`` (role -> spec, ``file`` relative to
        ``artifact_dir`` or absolute) replaces the manifest's, e.g. for candidate graphs during calibration."""
        self.precision = precision
        specs = {role: (graphs or {}).get(role) or manifest.graph(role, precision) for role in roles}
        self._runners = {role: OrtRunner(artifact_dir, specs[role], providers, precision) for role in roles}
        used = sorted({p for r in self._runners.values() for p in r.providers}, key=PROVIDER_PREFERENCE.index)
        custom = any(r.uses_custom_ops for r in self._runners.values())
        self.providers = used
        self.description = (f"ONNX Runtime {ort.__version__} ({', '.join(used)})"
                            + (", avs custom-op library registered" if custom else ""))
        if "TensorrtExecutionProvider" in used:
            self.description += "; its TensorRT engines are built on first use (minutes) and cached in ort_trt_cache/"

    def runner(self, role: str) -> OrtRunner:
        if role not in self._runners:
            raise BackendError(f"graph {role!r} was not opened (opened: {', '.join(self._runners)})")
        return self._runners[role]

    def close(self) -> None:
        self._runners.clear()
