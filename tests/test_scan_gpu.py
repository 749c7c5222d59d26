"""SelectiveScan on an NVIDIA GPU: the CUDA launcher and the TensorRT plugin against the CPU reference.

Run it with ``python -m plugins.selftest`` (or ``pytest -m gpu tests/test_scan_gpu.py``). Every test skips, naming the
reason, on a machine without a CUDA device; the plugin tests also without TensorRT's Python package. Device memory
comes from torch when it has CUDA, else from cuda-python (``pip install cuda-python``).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

import plugins
from export.ops.selective_scan import scan_reference
from plugins.scan_contract import DOMAIN, OP_TYPE, OPSET_VERSION, PLUGIN_VERSION, node_attributes
from plugins.scan_contract import INPUT_NAMES as NAMES
from tests.scan_grid import GRID, GRID_IDS, grid_flags, make_inputs

pytestmark = pytest.mark.gpu

TOLERANCE = {np.float32: (1e-4, 1e-4), np.float16: (2e-3, 2e-3)}     # (rtol, atol): the README's "Tolerances"


class ScanParams(ctypes.Structure):
    """ctypes mirror of avs::SelectiveScanParams (plugins/selective_scan/selectiveScanParams.h)."""

    _fields_ = [("batch", ctypes.c_int32), ("dim", ctypes.c_int32), ("seqlen", ctypes.c_int32),
                ("dstate", ctypes.c_int32), ("ngroups", ctypes.c_int32), ("deltaSoftplus", ctypes.c_bool),
                ("dataType", ctypes.c_int32)] + [(name, ctypes.c_void_p) for name in (
                    "u", "delta", "A", "B", "C", "D", "z", "deltaBias", "y")]


class TorchDevice:
    """Device buffers as torch CUDA tensors."""

    def __init__(self):
        self.tensors: dict[int, torch.Tensor] = {}

    def upload(self, array: np.ndarray) -> int:
        return self._keep(torch.from_numpy(np.ascontiguousarray(array)).cuda())

    def empty(self, shape, dtype) -> int:
        return self._keep(torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device="cuda"))

    def _keep(self, tensor: torch.Tensor) -> int:
        self.tensors[tensor.data_ptr()] = tensor
        return tensor.data_ptr()

    def download(self, ptr: int) -> np.ndarray:
        return self.tensors[ptr].cpu().numpy()

    def stream(self) -> int:
        return torch.cuda.current_stream().cuda_stream

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def free(self) -> None:
        self.tensors.clear()


class CudaPythonDevice:
    """Device buffers through cuda-python's runtime bindings, for machines whose torch has no CUDA."""

    def __init__(self, cudart):
        self.cudart = cudart
        self.buffers: dict[int, tuple] = {}
        self._stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result):
        if result[0] != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {self.cudart.cudaGetErrorName(result[0])[1].decode()}")
        return result[1] if len(result) > 1 else None

    def empty(self, shape, dtype) -> int:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.cudart.cudaMalloc(max(nbytes, 1))))
        self.buffers[ptr] = (tuple(shape), np.dtype(dtype))
        return ptr

    def upload(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        ptr = self.empty(array.shape, array.dtype)
        self._check(self.cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return ptr

    def download(self, ptr: int) -> np.ndarray:
        shape, dtype = self.buffers[ptr]
        out = np.empty(shape, dtype)
        self._check(self.cudart.cudaMemcpy(out.ctypes.data, ptr, out.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def stream(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaDeviceSynchronize())

    def free(self) -> None:
        for ptr in self.buffers:
            self.cudart.cudaFree(ptr)
        self.buffers.clear()


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


@pytest.fixture(scope="module")
def device():
    if torch.cuda.is_available():
        dev = TorchDevice()
    else:
        cudart = _cudart()
        if cudart is None:
            pytest.skip("no CUDA device: torch has no CUDA and cuda-python is not installed")
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess or not count:
            pytest.skip(f"no CUDA device ({cudart.cudaGetErrorName(error)[1].decode()})")
        dev = CudaPythonDevice(cudart)
    yield dev
    dev.free()


def _library(getter) -> str:
    try:
        return getter()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def launcher(device):
    lib = ctypes.CDLL(_library(plugins.cuda_library_path))
    lib.avsSelectiveScanCuda.argtypes = [ctypes.POINTER(ScanParams), ctypes.c_void_p]
    lib.avsSelectiveScanCuda.restype = ctypes.c_int32
    return lib.avsSelectiveScanCuda


def _reference(data: dict, softplus: bool) -> np.ndarray:
    args = [None if data[k] is None else torch.from_numpy(data[k]) for k in NAMES]
    return scan_reference(*args, delta_softplus=softplus).float().numpy()


def _compare(y: np.ndarray, expected: np.ndarray, dtype, label: str) -> None:
    rtol, atol = TOLERANCE[dtype]
    err = np.abs(y.astype(np.float64) - expected)
    print(f"{label}: max abs err {err.max():.2e}, mean {err.mean():.2e}")
    assert np.isfinite(y).all(), f"{label}: non-finite output"
    assert np.all(err <= atol + rtol * np.abs(expected)), f"{label}: max abs err {err.max():.3e}"


def _run_launcher(launcher, device, data: dict, softplus: bool) -> np.ndarray:
    u = data["u"]
    groups = data["B"].shape[1] if data["B"].ndim == 4 else 1
    ptrs = {k: (None if data[k] is None else device.upload(data[k])) for k in NAMES}
    y = device.empty(u.shape, u.dtype)
    params = ScanParams(batch=u.shape[0], dim=u.shape[1], seqlen=u.shape[2], dstate=data["A"].shape[1],
                        ngroups=groups, deltaSoftplus=softplus, dataType=1 if u.dtype == np.float16 else 0,
                        deltaBias=ptrs["delta_bias"], y=y, **{k: ptrs[k] for k in NAMES[:7]})
    status = launcher(ctypes.byref(params), device.stream())
    assert status == 0, f"avsSelectiveScanCuda returned cudaError {status}"
    device.synchronize()
    return device.download(y)


@pytest.mark.parametrize("index,case", list(enumerate(GRID)), ids=GRID_IDS)
def test_cuda_kernel_matches_reference(launcher, device, index, case):
    length, dstate, groups = case
    flags = grid_flags(index, length)
    data = make_inputs(np.random.default_rng(index), batch=2 if length < 100 else 1, dim=8, length=length,
                       dstate=dstate, groups=groups, with_d=flags["with_d"], with_z=flags["with_z"],
                       with_bias=flags["with_bias"], softplus=flags["softplus"], dtype=flags["dtype"])
    y = _run_launcher(launcher, device, data, flags["softplus"])
    assert y.dtype == data["u"].dtype and y.shape == data["u"].shape
    _compare(y, _reference(data, flags["softplus"]), flags["dtype"], f"L={length} N={dstate} G={groups} {flags}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_cuda_kernel_many_rows(launcher, device, dtype):
    """An AVS-Mamba-sized call: many (batch, channel) blocks, grouped B/C, a 3920-step scan."""
    data = make_inputs(np.random.default_rng(7), batch=2, dim=96, length=3920, dstate=16, groups=6, with_z=False,
                       dtype=dtype)
    _compare(_run_launcher(launcher, device, data, True), _reference(data, True), dtype, "batch 2, D 96, L 3920")


# --- TensorRT plugin ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trt(device):
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package (tensorrt) is not installed")
    path = _library(plugins.trt_plugin_path)
    registry = trt.get_plugin_registry()
    if registry.get_creator(OP_TYPE, PLUGIN_VERSION, DOMAIN) is None:     # another test may have loaded it already
        assert registry.load_library(path) is not None, f"IPluginRegistry::loadLibrary({path}) failed"
    assert registry.get_creator(OP_TYPE, PLUGIN_VERSION, DOMAIN) is not None, "SelectiveScan/1/avs not registered"
    return trt


def _scan_model(data: dict, softplus: bool, node_inputs: list[str]) -> bytes:
    """One SelectiveScan node; u, delta, B, C, z are graph inputs, A, D and delta_bias fp32 initializers."""
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}
    present = [n for n in node_inputs if n]
    graph_inputs = [helper.make_tensor_value_info(n, onnx_type[data[n].dtype], data[n].shape)
                    for n in present if n in ("u", "delta", "B", "C", "z")]
    initializers = [numpy_helper.from_array(data[n], n) for n in present if n in ("A", "D", "delta_bias")]
    node = helper.make_node(OP_TYPE, node_inputs, ["y"], domain=DOMAIN, **node_attributes(softplus))
    output = helper.make_tensor_value_info("y", onnx_type[data["u"].dtype], data["u"].shape)
    graph = helper.make_graph([node], "scan", graph_inputs, [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    return model.SerializeToString()


def _build_engine(trt, model: bytes):
    """(engine, None) or (None, the parser's or builder's complaint). Strongly typed: the graph's dtypes decide."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        return None, "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
    serialized = builder.build_serialized_network(network, builder.create_builder_config())
    if serialized is None:
        return None, "build_serialized_network returned None (see the TensorRT log above)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)   # recreates the plugin from its fields
    return engine, None


def _run_engine(trt, engine, device, data: dict) -> np.ndarray:
    context = engine.create_execution_context()
    y = None
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_tensor_address(name, device.upload(data[name]))
        else:
            y = device.empty(data["u"].shape, data["u"].dtype)
            context.set_tensor_address(name, y)
    assert context.execute_async_v3(device.stream()), "execute_async_v3 failed"
    device.synchronize()
    return device.download(y)


# (node inputs, B/C groups, L, N, dtype, softplus); inputs are read by position and the optional ones present form a
# prefix, as the exporter writes them (TensorRT's parser hands an empty input name to the plugin as a null tensor).
PLUGIN_CASES = {
    "all-inputs-fp32": (list(NAMES), 4, 63, 16, np.float32, True),
    "required-only-fp16": (list(NAMES[:5]), 0, 2049, 16, np.float16, False),
    "D-only": (list(NAMES[:6]), 0, 5, 16, np.float32, True),
    "D-and-z-fp16": (list(NAMES[:7]), 2, 300, 1, np.float16, True),
}


@pytest.mark.parametrize("case", PLUGIN_CASES, ids=list(PLUGIN_CASES))
def test_trt_plugin_matches_reference(trt, device, case):
    node_inputs, groups, length, dstate, dtype, softplus = PLUGIN_CASES[case]
    present = set(node_inputs)
    data = make_inputs(np.random.default_rng(11), batch=2, dim=8, length=length, dstate=dstate, groups=groups,
                       with_d="D" in present, with_z="z" in present, with_bias="delta_bias" in present,
                       softplus=softplus, dtype=dtype)
    engine, error = _build_engine(trt, _scan_model(data, softplus, node_inputs))
    assert engine is not None, error
    y = _run_engine(trt, engine, device, data)
    assert y.dtype == data["u"].dtype and y.shape == data["u"].shape
    _compare(y, _reference(data, softplus), dtype, case)


def test_trt_dropped_empty_name_is_refused(trt):
    """[u, delta, A, B, C, D, delta_bias] puts delta_bias in z's slot (inputs are positional): no engine, no misread."""
    data = make_inputs(np.random.default_rng(13), batch=1, dim=8, length=5, dstate=16, with_z=False, softplus=True)
    engine, error = _build_engine(trt, _scan_model(data, True, list(NAMES[:6]) + ["delta_bias"]))
    assert engine is None and error


@pytest.mark.parametrize("node_inputs", [list(NAMES[:6]) + ["", "delta_bias"], list(NAMES[:6]) + ["", ""]],
                         ids=["empty-z-between", "empty-trailing"])
def test_trt_empty_optional_input_names(trt, device, node_inputs):
    """Records what TensorRT does with empty optional input names: a clear build error, or a right answer."""
    present = set(node_inputs)
    data = make_inputs(np.random.default_rng(12), batch=1, dim=8, length=5, dstate=16, with_d=True, with_z=False,
                       with_bias="delta_bias" in present, softplus=True)
    engine, error = _build_engine(trt, _scan_model(data, True, node_inputs))
    if engine is None:
        print(f"TensorRT {trt.__version__} refuses empty optional input names {node_inputs}: {error}")
        assert error
        return
    print(f"TensorRT {trt.__version__} accepts empty optional input names {node_inputs}")
    _compare(_run_engine(trt, engine, device, data), _reference(data, True), np.float32, "empty names")
