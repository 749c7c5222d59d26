"""The GPU side of SelectiveScan as far as a machine without a GPU can check it.

The CUDA kernel compiles for every target architecture, and the TensorRT plugin's host logic (compiled into
``libavs_scan_plugin_logic.so``, no TensorRT needed) decides formats, shapes, input roles and attributes as the
contract in ``plugins/selective_scan/README.md`` says. Running the kernel and the plugin is ``tests/test_scan_gpu.py``;
the contract's own rules (identity, positional roles) are ``tests/test_scan_contract.py``.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plugins
from runtime.gpu import probe_gpu
from tests.test_scan_gpu import ScanParams

SCAN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "selective_scan"
ARCHS = ("87", "89", "90")
MAX_RANK = 8
FLOAT, HALF, INT8, INT32 = 0, 1, 2, 3          # TensorRT DataType numbers
LINEAR, CHW2 = 0, 1                            # TensorRT TensorFormat numbers
FIELD_INT32, FIELD_INT64 = 5, 10               # TensorRT PluginFieldType numbers


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    return found or (str(Path("/usr/local/cuda/bin/nvcc")) if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def test_kernel_compiles_for_every_target_arch(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA kernel can only be compiled where the CUDA toolkit is installed")
    # Device code only (-fatbin): the host side is compiled by `python -m plugins.build` (gpu.cmake) anyway.
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [nvcc, "-std=c++17", "-fatbin", str(SCAN_DIR / "selectiveScanKernel.cu"), "-o", str(tmp_path / "k.fatbin"),
           "-Werror=all-warnings", "--threads=0", "-Xptxas=-v", *gencode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "k.fatbin").stat().st_size > 0
    # ptxas reports one line per compiled kernel and arch: 2 data types x 3 chunk shapes for each arch.
    compiled = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", done.stderr)
    for arch in ARCHS:
        kernels = {name for name, a in compiled if a == arch}
        assert len(kernels) == 6, f"sm_{arch}: expected 6 kernel instantiations, got {sorted(kernels)}"


def test_params_mirror_matches_the_header(tmp_path):
    """tests/test_scan_gpu.py hands the launcher a ctypes copy of SelectiveScanParams: same offsets, same size."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    fields = [name for name, _ in ScanParams._fields_]
    source = tmp_path / "layout.cpp"
    source.write_text('#include "selectiveScanParams.h"\n#include <cstddef>\n#include <cstdio>\nint main() {\n'
                      + "".join(f'std::printf("%zu\\n", offsetof(avs::SelectiveScanParams, {f}));\n' for f in fields)
                      + 'std::printf("%zu\\n", sizeof(avs::SelectiveScanParams));\n}\n')
    subprocess.run([compiler, "-std=c++17", f"-I{SCAN_DIR}", str(source), "-o", str(tmp_path / "layout")], check=True)
    printed = [int(v) for v in subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                                              check=True).stdout.split()]
    assert printed == [getattr(ScanParams, f).offset for f in fields] + [ctypes.sizeof(ScanParams)]


def test_cuda_launcher_validates_before_touching_the_device():
    """Bad params return cudaErrorInvalidValue (1) before any CUDA call, so this runs without a GPU."""
    try:
        lib = ctypes.CDLL(plugins.cuda_library_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    launch = lib.avsSelectiveScanCuda
    launch.argtypes, launch.restype = [ctypes.POINTER(ScanParams), ctypes.c_void_p], ctypes.c_int32
    good = dict(batch=1, dim=8, seqlen=5, dstate=4, ngroups=1, u=1, delta=1, A=1, B=1, C=1, y=1)
    for change in (dict(seqlen=0), dict(batch=0), dict(dstate=257), dict(ngroups=3), dict(ngroups=0), dict(u=None),
                   dict(y=None), dict(dataType=7), dict(batch=65536, dim=65536)):
        assert launch(ctypes.byref(ScanParams(**{**good, **change})), None) == 1, change
    assert launch(None, None) == 1


@pytest.mark.parametrize("flags,code", [([], 0), (["--require-gpu"], 1)])
def test_selftest_without_a_gpu_says_skipped(flags, code):
    gpu, problem = probe_gpu()
    if gpu is not None:
        pytest.skip("this machine has a CUDA device: run `python -m plugins.selftest` for the real self-test")
    done = subprocess.run([sys.executable, "-m", "plugins.selftest", *flags], capture_output=True, text=True,
                          cwd=SCAN_DIR.parents[1], timeout=120)
    assert done.returncode == code, done.stdout + done.stderr
    assert f"SelectiveScan GPU self-test: skipped ({problem})" in done.stdout


class Logic:
    """ctypes view of libavs_scan_plugin_logic.so's C ABI."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        i32p, i64p, cp = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64), ctypes.c_char_p
        self.lib.avsScanLogicSupportsFormat.argtypes = [ctypes.c_int32] * 3 + [i32p] * 2
        self.lib.avsScanLogicOutputDims.argtypes = [ctypes.c_int32, i32p, i64p, i32p, i64p, cp, ctypes.c_int32]
        self.lib.avsScanLogicLaunchParams.argtypes = [ctypes.c_int32, i32p, i64p, ctypes.c_int32, ctypes.c_int32,
                                                      i32p, cp, ctypes.c_int32]
        self.lib.avsScanLogicWorkspaceSize.restype = ctypes.c_int64
        self.lib.avsScanLogicParseFields.argtypes = [ctypes.c_int32, ctypes.POINTER(cp), i32p, i32p,
                                                     ctypes.POINTER(ctypes.c_void_p), i32p, cp, ctypes.c_int32]

    @staticmethod
    def _i32(values):
        return (ctypes.c_int32 * max(len(values), 1))(*values)

    @staticmethod
    def _dims(shapes):
        flat = [0] * (MAX_RANK * len(shapes))
        for i, shape in enumerate(shapes):
            flat[i * MAX_RANK:i * MAX_RANK + len(shape)] = shape
        return (ctypes.c_int64 * len(flat))(*flat)

    def supports(self, pos, nb_inputs, types, formats=None, nb_outputs=1) -> bool:
        formats = formats or [LINEAR] * len(types)
        return bool(self.lib.avsScanLogicSupportsFormat(pos, nb_inputs, nb_outputs, self._i32(types),
                                                        self._i32(formats)))

    def output_dims(self, shapes) -> tuple | str:
        rank, dims, message = ctypes.c_int32(), (ctypes.c_int64 * MAX_RANK)(), ctypes.create_string_buffer(512)
        if self.lib.avsScanLogicOutputDims(len(shapes), self._i32([len(s) for s in shapes]), self._dims(shapes),
                                           ctypes.byref(rank), dims, message, 512):
            return message.value.decode()
        return tuple(dims[:rank.value])

    def launch_params(self, shapes, data_type=FLOAT, softplus=0) -> tuple | str:
        """(batch, D, L, N, G, delta_softplus, ScanDataType) or the error message."""
        values, message = self._i32([-1] * 7), ctypes.create_string_buffer(512)
        if self.lib.avsScanLogicLaunchParams(len(shapes), self._i32([len(s) for s in shapes]), self._dims(shapes),
                                             data_type, softplus, values, message, 512):
            return message.value.decode()
        return tuple(values)

    def parse(self, fields) -> int | str:
        """fields: (name, PluginFieldType number, int values, ctype); -> delta_softplus or the error message."""
        buffers = [(ctype * max(len(values), 1))(*values) for _, _, values, ctype in fields]
        n = len(fields)
        names = (ctypes.c_char_p * max(n, 1))(*[f[0].encode() for f in fields])
        data = (ctypes.c_void_p * max(n, 1))(*[ctypes.cast(b, ctypes.c_void_p) for b in buffers])
        value, message = ctypes.c_int32(-1), ctypes.create_string_buffer(512)
        if self.lib.avsScanLogicParseFields(n, names, self._i32([f[1] for f in fields]),
                                            self._i32([len(f[2]) for f in fields]), data, ctypes.byref(value),
                                            message, 512):
            return message.value.decode()
        return value.value

    def serialized(self, delta_softplus: int) -> tuple:
        name, ftype, length, value = ctypes.c_char_p(), ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        self.lib.avsScanLogicSerializedField(delta_softplus, ctypes.byref(name), ctypes.byref(ftype),
                                             ctypes.byref(length), ctypes.byref(value))
        return name.value.decode(), ftype.value, length.value, value.value


@pytest.fixture(scope="module")
def logic() -> Logic:
    return Logic(plugins.logic_library_path())


def _shapes(batch=2, dim=8, length=5, dstate=16, groups=0, extras=("D", "z", "delta_bias")) -> list[tuple]:
    bc = (batch, groups, dstate, length) if groups else (batch, dstate, length)
    shape = {"u": (batch, dim, length), "delta": (batch, dim, length), "A": (dim, dstate), "B": bc, "C": bc,
             "D": (dim,), "z": (batch, dim, length), "delta_bias": (dim,)}
    return [shape[name] for name in ("u", "delta", "A", "B", "C", *extras)]


def _types(layout: str, data: int) -> list[int]:
    """Per position: 'd' = data type, 'f' = fp32."""
    return [data if c == "d" else FLOAT for c in layout]


# (optional inputs present, per-position kind for u, delta, A, B, C, extras..., y); positions are slots
FORMAT_LAYOUTS = [
    ((), "ddfddd"),
    (("D",), "ddfddfd"),
    (("D", "z"), "ddfddfdd"),
    (("D", "z", "delta_bias"), "ddfddfdfd"),
]


@pytest.mark.parametrize("present,layout", FORMAT_LAYOUTS,
                         ids=lambda v: ("+".join(v) or "none") if isinstance(v, tuple) else v)
@pytest.mark.parametrize("data", [FLOAT, HALF], ids=["fp32", "fp16"])
def test_format_combinations(logic, present, layout, data):
    nb_inputs = 5 + len(present)
    good = _types(layout, data)
    for pos in range(len(good)):
        assert logic.supports(pos, nb_inputs, good), f"position {pos} rejected {good}"
        allowed = {FLOAT, HALF} if pos == 0 else {good[pos]}          # u decides the data type of the rest
        for other in (FLOAT, HALF, INT8, INT32):
            if other not in allowed:
                bad = good[:pos] + [other] + good[pos + 1:]
                assert not logic.supports(pos, nb_inputs, bad), f"position {pos} accepted type {other}"
        formats = [LINEAR] * len(good)
        formats[pos] = CHW2
        assert not logic.supports(pos, nb_inputs, good, formats), f"position {pos} accepted a non-linear format"


def test_format_decision_reads_no_later_position(logic):
    """TensorRT fills positions after `pos` with garbage: the answer for pos must not depend on them."""
    types = [HALF, HALF, FLOAT, HALF, HALF, FLOAT, HALF, FLOAT, HALF]
    for pos in range(len(types)):
        garbage_types = types[:pos + 1] + [INT8] * (len(types) - pos - 1)
        assert logic.supports(pos, 8, garbage_types)


def test_format_rejects_bad_counts_and_positions(logic):
    types = [FLOAT] * 6
    assert logic.supports(5, 5, types)
    assert not logic.supports(6, 5, types + [FLOAT])               # past the output
    assert not logic.supports(0, 5, types + [FLOAT], nb_outputs=2)
    assert not logic.supports(0, 4, types[:5])                     # 4 inputs
    assert not logic.supports(0, 9, types * 2)                     # 9 inputs


@pytest.mark.parametrize("kwargs", [dict(), dict(groups=4), dict(length=1, extras=()), dict(batch=1, length=15680),
                                    dict(extras=("D", "z")), dict(dstate=256, extras=("D",))])
def test_output_dims_are_those_of_u(logic, kwargs):
    shapes = _shapes(**kwargs)
    assert logic.output_dims(shapes) == shapes[0]


def test_output_dims_accept_unknown_extents(logic):
    shapes = _shapes(groups=4)
    unknown = [tuple(-1 if i != 1 or len(s) == 1 else e for i, e in enumerate(s)) for s in shapes]
    unknown[2] = (8, 16)
    assert logic.output_dims(unknown) == (-1, 8, -1)


@pytest.mark.parametrize("change,message", [
    (dict(index=0, shape=(2, 8)), "input 'u' must be (batch, D, L), got (2, 8)"),
    (dict(index=1, shape=(2, 8, 6)), "input 'delta' must be (batch, D, L) = (2, 8, 5) like u, got (2, 8, 6)"),
    (dict(index=2, shape=(7, 16)), "input 'A' must be (D, N) with D = 8, got (7, 16)"),
    (dict(index=3, shape=(2, 16, 4)), "input 'B' must be (batch, N, L) = (2, 16, 5)"),
    (dict(index=4, shape=(2, 16, 5, 1)), "input 'C' must be"),
    (dict(index=5, shape=(9,)), "input 'D' must be (D,) = (8,), got (9,)"),
    (dict(index=6, shape=(2, 8, 4)), "input 'z' must be (batch, D, L)"),
    (dict(index=7, shape=(8, 1)), "input 'delta_bias' must be (D,) = (8,), got (8, 1)"),
    (dict(index=6, shape=(8,)), "got (8,); inputs are read by position"),       # a dropped empty z name
])
def test_bad_shapes_name_the_input(logic, change, message):
    shapes = _shapes()
    shapes[change["index"]] = change["shape"]
    result = logic.output_dims(shapes)
    assert isinstance(result, str) and message in result, result


@pytest.mark.parametrize("kwargs,message", [
    (dict(length=0), "L = 0 (empty sequence, u is (2, 8, 0))"),
    (dict(dstate=257), "N = 257 exceeds the CUDA kernel's limit of 256"),
    (dict(groups=3), "G = 3 groups, which does not divide D = 8"),
    (dict(batch=0), "batch and D must be positive"),
])
def test_bad_sizes_are_explained(logic, kwargs, message):
    result = logic.output_dims(_shapes(**kwargs))
    assert isinstance(result, str) and message in result, result


def test_launch_params(logic):
    grouped = _shapes(batch=3, dim=12, length=2049, dstate=16, groups=4)
    assert logic.launch_params(grouped, HALF, softplus=1) == (3, 12, 2049, 16, 4, 1, 1)
    assert logic.launch_params(_shapes(batch=1, dim=8, length=7, dstate=1, extras=())) == (1, 8, 7, 1, 1, 0, 0)
    unknown = _shapes()
    unknown[0] = unknown[1] = unknown[6] = (2, 8, -1)
    assert "must be concrete" in logic.launch_params(unknown)
    assert "fp32 or fp16" in logic.launch_params(_shapes(), INT8)


def test_no_workspace(logic):
    assert logic.lib.avsScanLogicWorkspaceSize() == 0


@pytest.mark.parametrize("fields,expected", [
    ([("delta_softplus", FIELD_INT32, [1], ctypes.c_int32)], 1),
    ([("delta_softplus", FIELD_INT32, [0], ctypes.c_int32)], 0),
    ([], 0),                                                                     # attribute absent: default
    ([("plugin_version", 6, [ord("1"), 0], ctypes.c_uint8),
      ("delta_softplus", FIELD_INT32, [1], ctypes.c_int32)], 1),                # unknown fields are ignored
])
def test_fields_parse(logic, fields, expected):
    assert logic.parse(fields) == expected


@pytest.mark.parametrize("fields,message", [
    ([("delta_softplus", FIELD_INT64, [1], ctypes.c_int64)], "must be one INT32 value"),
    ([("delta_softplus", FIELD_INT32, [1, 1], ctypes.c_int32)], "with length 2"),
    ([("delta_softplus", FIELD_INT32, [2], ctypes.c_int32)], "must be 0 or 1, got 2"),
])
def test_bad_fields_are_explained(logic, fields, message):
    result = logic.parse(fields)
    assert isinstance(result, str) and message in result, result


@pytest.mark.parametrize("value", [0, 1])
def test_attribute_round_trip(logic, value):
    name, ftype, length, stored = logic.serialized(value)
    assert (name, ftype, length, stored) == ("delta_softplus", FIELD_INT32, 1, value)
    assert logic.parse([(name, ftype, [stored], ctypes.c_int32)]) == value
