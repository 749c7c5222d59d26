"""TensorRT backend: the artifact's engines, run through the tensorrt Python API with CUDA buffers and a stream.

Engines are the plain plans ``python -m export.build_engine`` writes, each with a sidecar key (graph, TensorRT
version, GPU, compute capability, precision, plugin library). :func:`engines_for_this_machine` accepts them only
when that key matches this machine (:mod:`runtime.engine_cache` decides, for the builder too, so both agree),
else it says what differs. Device memory and the stream come from cuda-python (``cuda.bindings``), or
from pycuda when only that is installed.

Where no GPU exists (CI) this module is compiled, not executed: its host logic (engine matching, tensor tables,
CUDA error handling) is unit-tested and ``pytest -m gpu`` compares it with ONNX Runtime on a GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from runtime.backends import BackendError, check_feeds
from runtime.engine_cache import EngineCache, EngineKey, graph_sha256, import_tensorrt, tensorrt_version
from runtime.gpu import probe_gpu
from runtime.integrity import file_sha256
from runtime.manifest import EngineRecord, GraphSpec, Manifest

__all__ = ["TensorInfo", "tensor_table", "engines_for_this_machine", "CudaApi", "TrtRunner", "TensorRTBackend"]

# TensorRT DataType name -> numpy dtype (the types our graphs can have at their inputs and outputs).
TRT_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8,
              "UINT8": np.uint8, "BOOL": np.bool_}


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor."""
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def tensor_table(engine: Any, trt: Any) -> list[TensorInfo]:
    """The engine's I/O tensors; dynamic dimensions (-1) are refused (our graphs are static)."""
    table = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype_name = getattr(engine.get_tensor_dtype(name), "name", str(engine.get_tensor_dtype(name)))
        if dtype_name not in TRT_DTYPES:
            raise BackendError(f"engine tensor {name!r} has type {dtype_name}, which this runtime cannot feed")
        if any(d < 0 for d in shape):
            raise BackendError(f"engine tensor {name!r} has a dynamic shape {shape}; rebuild the artifact "
                               "(its graphs have static shapes)")
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        table.append(TensorInfo(name, is_input, shape, np.dtype(TRT_DTYPES[dtype_name])))
    return table


def engines_for_this_machine(artifact_dir: Path, manifest: Manifest, roles: Sequence[str], precision: str = "fp32"
                             ) -> tuple[Optional[dict[str, EngineRecord]], str]:
    """``({role: record}, "")`` when every role has a ``precision`` engine built for this GPU and TensorRT, else
    ``(None, why)``."""
    status = manifest.engine
    if not status.built:
        return None, f"the artifact has no TensorRT engines ({status.reason})"
    records = {r.graph: r for r in status.engines if r.precision == precision}
    missing = [role for role in roles if role not in records]
    if missing:
        return None, f"the artifact has no {precision} engine for the {', '.join(missing)} graph(s)"
    trt, why = import_tensorrt()
    if trt is None:
        return None, why
    gpu, why = probe_gpu()
    if gpu is None:
        return None, why
    plugin = status.plugin_library
    plugin_sha = file_sha256(artifact_dir / plugin) if plugin and (artifact_dir / plugin).is_file() else "none"
    cache = EngineCache(artifact_dir)
    for role in roles:
        record = records[role]
        graph = artifact_dir / manifest.graph(role, precision).file
        key = EngineKey(graph_sha256(graph), tensorrt_version(trt), gpu.name, gpu.compute_capability,
                        record.precision, plugin_sha)
        ok, why = cache.check(artifact_dir / record.file, key)
        if not ok:
            return None, f"engine {record.file} does not fit this machine: {why}"
    return {role: records[role] for role in roles}, ""


class CudaApi:
    """Device memory, copies and a stream through cuda-python, or pycuda as a fallback."""

    def __init__(self):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart
            self._cudart, self.name = cudart, "cuda-python"
            self.stream = self.check(cudart.cudaStreamCreate())
        except ImportError:
            try:
                import pycuda.autoinit  # noqa: F401  (creates the context)
                import pycuda.driver as pycuda_driver
            except ImportError:
                raise BackendError("the TensorRT backend needs cuda-python (pip install cuda-python) or pycuda") \
                    from None
            self._cudart, self._pycuda, self.name = None, pycuda_driver, "pycuda"
            self._pycuda_stream = pycuda_driver.Stream()
            self.stream = self._pycuda_stream.handle

    def check(self, result: Any) -> Any:
        """Unwrap a cuda-python ``(error, value...)`` tuple, raising :class:`BackendError` on an error code."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self._cudart.cudaGetErrorString(err)
            message = text.decode() if isinstance(text, bytes) else str(text)
            raise BackendError(f"CUDA error {int(err)}: {message}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def malloc(self, nbytes: int) -> int:
        if self._cudart is None:
            allocation = self._pycuda.mem_alloc(max(1, nbytes))
            self._keep = getattr(self, "_keep", []) + [allocation]
            return int(allocation)
        return int(self.check(self._cudart.cudaMalloc(max(1, nbytes))))

    def to_device(self, pointer: int, host: np.ndarray) -> None:
        if self._cudart is None:
            self._pycuda.memcpy_htod_async(pointer, host, self._pycuda_stream)
        else:
            self.check(self._cudart.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes,
                                                    self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def to_host(self, host: np.ndarray, pointer: int) -> None:
        if self._cudart is None:
            self._pycuda.memcpy_dtoh_async(host, pointer, self._pycuda_stream)
        else:
            self.check(self._cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes,
                                                    self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def synchronize(self) -> None:
        if self._cudart is None:
            self._pycuda_stream.synchronize()
        else:
            self.check(self._cudart.cudaStreamSynchronize(self.stream))

    def free(self, pointer: int) -> None:
        if self._cudart is not None:
            self.check(self._cudart.cudaFree(pointer))


class TrtRunner:
    """One engine: device buffers bound once, inputs copied in, ``execute_async_v3``, outputs copied out."""

    def __init__(self, trt: Any, runtime: Any, plan: bytes, spec: GraphSpec, cuda: CudaApi):
        self.role, self.spec, self._cuda = spec.role, spec, cuda
        self.inference_time = 0.0
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize the {spec.role} engine (see the messages above)")
        self.context = self.engine.create_execution_context()
        self.tensors = tensor_table(self.engine, trt)
        self._pointers = {}
        for tensor in self.tensors:
            self._pointers[tensor.name] = cuda.malloc(tensor.nbytes)
            self.context.set_tensor_address(tensor.name, self._pointers[tensor.name])

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.spec, feeds)
        outputs = {t.name: np.empty(t.shape, t.dtype) for t in self.tensors if not t.is_input}
        start = time.perf_counter()
        for tensor in self.tensors:
            if tensor.is_input:
                self._cuda.to_device(self._pointers[tensor.name], checked[tensor.name].astype(tensor.dtype))
        if not self.context.execute_async_v3(self._cuda.stream):
            raise BackendError(f"TensorRT failed to run the {self.role} engine")
        for name, host in outputs.items():
            self._cuda.to_host(host, self._pointers[name])
        self._cuda.synchronize()
        self.inference_time = time.perf_counter() - start
        return outputs

    def close(self) -> None:
        for pointer in self._pointers.values():
            self._cuda.free(pointer)
        self._pointers.clear()


class TensorRTBackend:
    """TensorRT engines for the requested graphs (see :func:`engines_for_this_machine`)."""
    name = "tensorrt"

    def __init__(self, artifact_dir: Path, manifest: Manifest, engines: dict[str, EngineRecord],
                 precision: str = "fp32"):
        self.precision = precision
        trt, why = import_tensorrt()
        if trt is None:
            raise BackendError(why)
        self._logger = trt.Logger(trt.Logger.WARNING)   # prints TensorRT's own warnings and errors; kept alive
        plugin = manifest.engine.plugin_library
        if plugin and trt.get_plugin_registry().load_library(str(Path(artifact_dir) / plugin)) is None:
            raise BackendError(f"TensorRT could not load the plugin library {plugin} shipped with the artifact")
        self._cuda = CudaApi()
        runtime = trt.Runtime(self._logger)
        self._runners = {role: TrtRunner(trt, runtime, (Path(artifact_dir) / record.file).read_bytes(),
                                         manifest.graph(role, precision), self._cuda)
                         for role, record in engines.items()}
        gpu, _ = probe_gpu()
        precision = {r.precision for r in engines.values()}
        self.description = (f"TensorRT ({tensorrt_version(trt)}, {'/'.join(sorted(precision))} engines on "
                            f"{gpu.name if gpu else 'GPU'}, buffers via {self._cuda.name})")

    def runner(self, role: str) -> TrtRunner:
        if role not in self._runners:
            raise BackendError(f"graph {role!r} has no engine loaded (loaded: {', '.join(self._runners)})")
        return self._runners[role]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
