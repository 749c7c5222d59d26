"""The SelectiveScan ONNX Runtime library (``plugins/lib/libavs_ort_ops.so``) in real sessions, and the native build.

Every scan runs one ``avs::SelectiveScan`` node built with ``onnx.helper`` and is compared with the fp64 loop of the
contract (``tests/scan_grid.py``). Tolerances are the README's ("Tolerances"); each case prints its max abs error.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import plugins
from plugins.scan_contract import DOMAIN, INPUT_NAMES, OP_TYPE, OPSET_VERSION, OUTPUT_NAMES, node_attributes
from tests.scan_grid import GRID, GRID_IDS, grid_flags, make_inputs, scan_fp64

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {np.float32: (1e-4, 1e-4), np.float16: (2e-3, 2e-3)}  # (atol, rtol) against the fp64 loop


def _build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plugins.build", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def library() -> str:
    """``libavs_ort_ops.so``, built first if this checkout has none."""
    try:
        return plugins.ort_library_path()
    except FileNotFoundError:
        done = _build()
        if done.returncode != 0:
            pytest.fail(f"python -m plugins.build failed:\n{done.stdout}\n{done.stderr}")
        return plugins.ort_library_path()


def scan_model(inputs: dict, *, softplus: int = 0, attributes: dict | None = None,
               names: list[str] | None = None) -> onnx.ModelProto:
    """A model of one SelectiveScan node; inputs that are None become empty names (trailing ones are dropped).

    ``names`` overrides the node's input list (a hand-written node).
    """
    if names is None:
        names = [name if inputs.get(name) is not None else "" for name in INPUT_NAMES]
        while names[-1] == "":
            names.pop()
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inputs[n].dtype), inputs[n].shape)
                    for n in names if n]
    if attributes is None:
        attributes = node_attributes(softplus)
    node = helper.make_node(OP_TYPE, names, list(OUTPUT_NAMES), domain=DOMAIN, **attributes)
    output = helper.make_tensor_value_info(OUTPUT_NAMES[0], helper.np_dtype_to_tensor_dtype(inputs["u"].dtype), None)
    graph = helper.make_graph([node], "selective_scan", graph_inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 10  # onnx 1.23 writes 12 by default, newer than onnxruntime 1.31 reads
    return model


def run_scan(library: str, inputs: dict, **model_options) -> np.ndarray:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(scan_model(inputs, **model_options).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {name: value for name, value in inputs.items() if value is not None})[0]


def _check(y: np.ndarray, data: dict, softplus: int, label: str) -> None:
    expected = scan_fp64(**data, delta_softplus=bool(softplus))
    assert y.dtype == data["u"].dtype and y.shape == data["u"].shape
    err = np.abs(y.astype(np.float64) - expected)
    atol, rtol = TOLERANCE[data["u"].dtype.type]
    print(f"{label}: max abs err {err.max():.2e}")
    assert np.all(err <= atol + rtol * np.abs(expected)), f"{label}: max abs err {err.max():.3e}"


@pytest.mark.parametrize("index,case", list(enumerate(GRID)), ids=GRID_IDS)
def test_matches_fp64_loop(library, index, case):
    length, dstate, groups = case
    flags = grid_flags(index, length)
    data = make_inputs(np.random.default_rng(index), batch=2 if length < 100 else 1, dim=20 if length < 100 else 8,
                       length=length, dstate=dstate, groups=groups, with_d=flags["with_d"], with_z=flags["with_z"],
                       with_bias=flags["with_bias"], dtype=flags["dtype"])
    if not flags["softplus"]:  # mamba's delta is positive once softplus is off: keep the recurrence contractive
        data["delta"] = np.log1p(np.exp(data["delta"].astype(np.float64))).astype(flags["dtype"])
        if data["delta_bias"] is not None:
            data["delta_bias"] = np.abs(data["delta_bias"])
    y = run_scan(library, data, softplus=flags["softplus"])
    _check(y, data, flags["softplus"], f"L={length} N={dstate} G={groups} {flags}")


def test_threads_and_channel_tails(library):
    """Enough work for several threads; 20 channels per group: a full 16-lane block and a 4-lane tail per group."""
    data = make_inputs(np.random.default_rng(5), batch=2, dim=40, length=2049, dstate=16, groups=2)
    _check(run_scan(library, data, softplus=1), data, 1, "batch 2, D 40, G 2, L 2049")


def test_grouped_form_with_one_group_equals_3d_form(library):
    data = make_inputs(np.random.default_rng(6), batch=2, dim=24, length=70, dstate=16)
    grouped = dict(data, B=data["B"][:, None], C=data["C"][:, None])
    np.testing.assert_array_equal(run_scan(library, grouped, softplus=1), run_scan(library, data, softplus=1))


@pytest.mark.parametrize("with_d,with_z,with_bias", list(itertools.product((False, True), repeat=3)))
def test_fp16_kernel_is_the_fp32_kernel_rounded(library, with_d, with_z, with_bias):
    """ORT picks the fp16 kernel for fp16 data (fp32 A, D, delta_bias), and its state never leaves fp32."""
    half = make_inputs(np.random.default_rng(7), batch=2, dim=20, length=300, dstate=16, groups=4, with_d=with_d,
                       with_z=with_z, with_bias=with_bias, dtype=np.float16)
    single = {k: None if v is None else v.astype(np.float32) for k, v in half.items()}
    y16 = run_scan(library, half, softplus=1)
    y32 = run_scan(library, single, softplus=1)
    assert y16.dtype == np.float16 and y32.dtype == np.float32
    np.testing.assert_array_equal(y16, y32.astype(np.float16))


def test_fp16_conversions_round_to_nearest_even(library):
    """B = 0 leaves y = D * u: fp16 subnormal inputs and outputs, overflow to inf and rounding ties, bit for bit."""
    u = np.array([0, 6e-8, -6e-8, 1e-7, 6.1e-5, 1e-3, 1.0, 1.0 + 2**-10, 3.0, -2.5, 1000.0, 30000.0, 65504.0,
                  -65504.0], dtype=np.float16)
    scale = np.array([1.0, 0.5, 3.0, 1e-3, 4.0, 2**-14, 1.0 + 2**-11], dtype=np.float32)
    dim, length = len(scale), len(u)
    data = {"u": np.tile(u, (1, dim, 1)), "delta": np.ones((1, dim, length), np.float16),
            "A": -np.ones((dim, 1), np.float32), "B": np.zeros((1, 1, length), np.float16),
            "C": np.ones((1, 1, length), np.float16), "D": scale}
    with np.errstate(over="ignore"):
        expected = (data["u"].astype(np.float32) * scale[None, :, None]).astype(np.float16)
    assert np.isinf(expected).any() and (np.abs(expected[expected != 0]) < 2**-14).any()
    np.testing.assert_array_equal(run_scan(library, data), expected)


def test_exp_accuracy(library):
    """N = 1, L = 2, u = (1, 0), delta = 1, B = C = 1: y[:, 1] = exp(A), over the whole normal range."""
    a = np.linspace(-87.33, 88.72, 1_000_001, dtype=np.float32)
    dim = len(a)
    u = np.zeros((1, dim, 2), np.float32)
    u[:, :, 0] = 1.0
    data = {"u": u, "delta": np.ones((1, dim, 2), np.float32), "A": a[:, None],
            "B": np.ones((1, 1, 2), np.float32), "C": np.ones((1, 1, 2), np.float32)}
    y = run_scan(library, data)[0, :, 1].astype(np.float64)
    rel = np.abs(y / np.exp(a.astype(np.float64)) - 1.0)
    print(f"exp: max relative error {rel.max():.2e} at {a[rel.argmax()]}")
    assert rel.max() <= 1.5e-7


def test_softplus_and_silu_accuracy(library):
    """L = 1, A = 0, u = B = C = 1: y = softplus(delta) * silu(z) with one of the two held at 1."""
    x = np.linspace(-60.0, 60.0, 400_001, dtype=np.float32)
    dim = len(x)
    ones = np.ones((1, dim, 1), np.float32)
    base = {"u": ones, "A": np.zeros((dim, 1), np.float32), "B": np.ones((1, 1, 1), np.float32),
            "C": np.ones((1, 1, 1), np.float32)}
    xd = x.astype(np.float64)
    softplus = run_scan(library, dict(base, delta=x.reshape(1, dim, 1)), softplus=1).ravel()
    silu = run_scan(library, dict(base, delta=ones, z=x.reshape(1, dim, 1))).ravel()
    for name, got, want, bound in (("softplus", softplus, np.where(xd <= 20, np.log1p(np.exp(xd)), xd), 4e-7),
                                   ("silu", silu, xd / (1.0 + np.exp(-xd)), 3e-7)):
        rel = np.abs(got.astype(np.float64) / want - 1.0)
        print(f"{name}: max relative error {rel.max():.2e} at {x[rel.argmax()]}")
        assert rel.max() <= bound


@pytest.mark.parametrize("field", ["u", "delta", "B", "C", "z"])
def test_nan_propagates_like_the_reference(library, field):
    """A nan input gives nan exactly where the fp64 loop does, never a finite value."""
    data = make_inputs(np.random.default_rng(8), batch=1, dim=20, length=10, dstate=4)
    data[field].flat[3] = np.nan
    y = run_scan(library, data, softplus=1)
    with np.errstate(invalid="ignore"):
        expected = scan_fp64(**data, delta_softplus=True)
    assert np.isnan(expected).any()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))


def _bad(**changes):
    """Valid fp32 inputs (batch 1, D 8, L 6, N 4, G 2) with some replaced."""
    data = make_inputs(np.random.default_rng(9), batch=1, dim=8, length=6, dstate=4, groups=2)
    data.update(changes)
    return data


_OK = _bad()
BAD_INPUTS = {
    "u rank 2": (_bad(u=_OK["u"][0]), r"input 'u' must be \(batch, D, L\), got \(8, 6\)"),
    "delta shape": (_bad(delta=_OK["delta"][:, :, :5]),
                    r"input 'delta' must be \(batch, D, L\) = \(1, 8, 6\) like u, got \(1, 8, 5\)"),
    "A rows": (_bad(A=_OK["A"][:4]), r"input 'A' must be \(D, N\) with D = 8, got \(4, 4\)"),
    "B state size": (_bad(B=_OK["B"][:, :, :3], C=_OK["C"][:, :, :3]),
                     r"input 'B' must be \(batch, N, L\) = \(1, 4, 6\) or \(batch, G, N, L\) = \(1, \?, 4, 6\) "
                     r"with G dividing D, got \(1, 2, 3, 6\)"),
    "G does not divide D": (_bad(B=np.zeros((1, 3, 4, 6), np.float32), C=np.zeros((1, 3, 4, 6), np.float32)),
                            r"B and C have G = 3 groups, which does not divide D = 8"),
    "C shape": (_bad(C=_OK["C"][..., :5]), r"input 'C' must be .*, like B \(1, 2, 4, 6\), got \(1, 2, 4, 5\)"),
    "D length": (_bad(D=np.ones(7, np.float32)), r"input 'D' must be \(D,\) = \(8,\), got \(7,\)"),
    "z shape": (_bad(z=_OK["z"][:, :4]), r"input 'z' must be \(batch, D, L\) = \(1, 8, 6\) like u, got \(1, 4, 6\)"),
    "delta_bias length": (_bad(delta_bias=np.ones((8, 1), np.float32)),
                          r"input 'delta_bias' must be \(D,\) = \(8,\), got \(8, 1\)"),
    "L = 0": (_bad(**{k: _OK[k][..., :0] for k in ("u", "delta", "B", "C", "z")}),
              r"L = 0 \(empty sequence, u is \(1, 8, 0\)\)"),
    "delta fp16": (_bad(delta=_OK["delta"].astype(np.float16)), r"input 'delta' is float16; expected float32 like u"),
    "A fp16 with fp16 data": (dict(make_inputs(np.random.default_rng(9), batch=1, dim=8, length=6, dstate=4,
                                               dtype=np.float16), A=_OK["A"].astype(np.float16)),
                              r"input 'A' is float16; expected float32 \(A, D and delta_bias are always float32\)"),
    "B float64": (_bad(B=_OK["B"].astype(np.float64)), r"input 'B' is float64; expected float32"),
    "u int32": (_bad(u=_OK["u"].astype(np.int32)), r"input 'u' is int32; expected float32 or float16"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_are_ort_errors_naming_the_problem(library, case):
    data, message = BAD_INPUTS[case]
    with pytest.raises(Exception, match=message):
        run_scan(library, data)


@pytest.mark.parametrize("value,message", [(2, r"'delta_softplus' must be 0 or 1, got 2"),
                                           (1.0, r"'delta_softplus' must be an INT \(0 or 1\), got a FLOAT")])
def test_bad_attribute_fails_session_creation(library, value, message):
    attributes = {**node_attributes(), "delta_softplus": value}
    with pytest.raises(Exception, match=message):
        run_scan(library, _bad(), attributes=attributes)


def test_attribute_defaults_to_no_softplus(library):
    data = _bad()
    y = run_scan(library, data, attributes={})
    np.testing.assert_array_equal(y, run_scan(library, data, softplus=0))
    assert not np.array_equal(y, run_scan(library, data, softplus=1))


def test_inputs_are_read_by_position(library):
    """A node whose empty z name was dropped puts delta_bias in z's slot: refused with the fix, never misread."""
    data = _bad(z=None)
    with pytest.raises(Exception, match=r"input 'z' must be \(batch, D, L\) = \(1, 8, 6\) like u, got \(8,\); "
                                        r"inputs are read by position"):
        run_scan(library, data, names=["u", "delta", "A", "B", "C", "D", "delta_bias"])
    data = dict(data, D=None)
    with_gap = run_scan(library, data, names=["u", "delta", "A", "B", "C", "", "", "delta_bias"])
    folded = dict(data, delta=data["delta"] + data["delta_bias"][:, None], delta_bias=None)
    np.testing.assert_allclose(with_gap, run_scan(library, folded), rtol=1e-6, atol=1e-6)


def test_omitted_required_input_is_refused(library):
    with pytest.raises(Exception, match="input 3 is marked single but has an empty string"):
        run_scan(library, _bad(B=None))


@pytest.mark.skipif(shutil.which("nm") is None or shutil.which("readelf") is None, reason="binutils not installed")
def test_library_exports_only_register_custom_ops(library):
    symbols = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True, check=True)
    assert [line.split()[-1] for line in symbols.stdout.splitlines()] == ["RegisterCustomOps"]
    dynamic = subprocess.run(["readelf", "-d", library], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not any("onnxruntime" in line for line in needed), needed


HOT_LOOPS = ("state = fastExp(", "dt[i] = softplus(dt[i]);", "y[i] *= silu(z[i]);")  # the scan, softplus, silu


def _vectorised_loops(compiler: str, command: list[str]) -> dict[str, set[str]]:
    """Recompile the kernel with ``command``'s flags; hot loop -> vector sizes GCC reports for it."""
    source = REPO / "plugins" / "selective_scan" / "selectiveScanCpu.cpp"
    lines = source.read_text().splitlines()
    loop_lines = {}
    for marker in HOT_LOOPS:
        body = next(i for i, line in enumerate(lines) if marker in line)
        loop_lines[marker] = next(i for i in range(body, -1, -1) if lines[i].lstrip().startswith("for (")) + 1
    flags = [arg for arg in command[1:] if arg not in ("-c", "-o") and not arg.endswith(".o") and arg != str(source)]
    done = subprocess.run([compiler, *flags, "-fopt-info-vec-optimized", "-c", str(source), "-o", os.devnull],
                          capture_output=True, text=True, cwd=REPO / "build" / "native")
    assert done.returncode == 0, done.stderr
    found = {marker: set() for marker in HOT_LOOPS}
    report = re.finditer(r"selectiveScanCpu\.cpp:(\d+):\d+: optimized: loop vectorized using (\d+) byte", done.stderr)
    for match in report:
        for marker, line in loop_lines.items():
            if int(match.group(1)) == line:
                found[marker].add(match.group(2))
    return found


@pytest.fixture(scope="module")
def kernel_compile_command(library) -> list[str]:
    """The build's own compile command for the CPU kernel (build/native/compile_commands.json)."""
    commands = json.loads((REPO / "build" / "native" / "compile_commands.json").read_text())
    command = shlex.split(next(c["command"] for c in commands if c["file"].endswith("selectiveScanCpu.cpp")))
    version = subprocess.run([command[0], "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:
        pytest.skip(f"{command[0]} is not GCC: the vectorisation report needs -fopt-info")
    return command


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 builds the three clones")
def test_hot_loops_vectorise_in_every_x86_clone(kernel_compile_command):
    """SSE2 (16-byte), AVX2 (32) and AVX-512 (64) bodies: losing one (e.g. -fno-trapping-math) costs 2-4x."""
    found = _vectorised_loops(kernel_compile_command[0], kernel_compile_command)
    assert found == {marker: {"16", "32", "64"} for marker in HOT_LOOPS}, found


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross compiler")
def test_hot_loops_vectorise_for_aarch64(kernel_compile_command):
    found = _vectorised_loops("aarch64-linux-gnu-g++", kernel_compile_command)
    assert all("16" in sizes for sizes in found.values()), found


def test_build_reports_every_part(library):
    done = _build()
    assert done.returncode == 0, done.stderr
    status = plugins.build_status()
    assert set(plugins.PARTS) <= set(status)
    lines = done.stdout.splitlines()
    path_of = {"ort_ops": plugins.ort_library_path, "scan_cuda": plugins.cuda_library_path,
               "trt_plugin": plugins.trt_plugin_path, "plugin_logic": plugins.logic_library_path}
    for name, part in plugins.PARTS.items():
        entry = status[name]
        if entry["status"] == "built":
            assert f"{part.label}: built (plugins/lib/{part.library})" in lines
            assert path_of[name]() == str(plugins.LIB_DIR / part.library)
        else:
            assert entry["status"] == "skipped" and entry["reason"]
            assert f"{part.label}: skipped ({entry['reason']})" in lines
            with pytest.raises(FileNotFoundError, match=re.escape(entry["reason"])):
                path_of[name]()
    assert status["ort_ops"]["status"] == "built"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_reports_too_old_ort_headers(tmp_path):
    """Headers older than C API 17 skip the op with the reason, and the part report stays valid JSON."""
    headers = tmp_path / "include"
    headers.mkdir()
    (headers / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 16\n")
    (headers / "onnxruntime_cxx_api.h").write_text("")
    done = subprocess.run(["cmake", "-S", str(REPO / "plugins"), "-B", str(tmp_path / "build"),
                           f"-DORT_INCLUDE_DIR={headers}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    parts = {entry["name"]: entry for entry in json.loads((tmp_path / "build" / "avs_parts.json").read_text())}
    assert parts["ort_ops"]["status"] == "skipped" and parts["ort_ops"]["library"] is None
    expected = f"the ONNX Runtime headers in {headers} are C API version 16; 17 or newer is needed"
    assert parts["ort_ops"]["reason"] == expected


def test_build_names_a_bad_header_folder(tmp_path):
    done = _build("--ort-include", str(tmp_path))
    assert done.returncode == 1
    assert f"--ort-include={tmp_path} holds no onnxruntime_cxx_api.h" in done.stderr


def test_build_without_cmake_says_so(tmp_path):
    done = _build(env=dict(os.environ, PATH=str(tmp_path)))
    assert done.returncode == 1
    assert "cmake not found on PATH: install CMake" in done.stderr


def test_missing_library_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setattr(plugins, "LIB_DIR", tmp_path)
    monkeypatch.setattr(plugins, "STATUS_FILE", tmp_path / "build_status.json")
    assert {entry["status"] for entry in plugins.build_status().values()} == {"not built"}
    for path_of in (plugins.ort_library_path, plugins.cuda_library_path, plugins.trt_plugin_path,
                    plugins.logic_library_path):
        with pytest.raises(FileNotFoundError, match=r"build it with `python -m plugins.build`"):
            path_of()


def test_plugins_never_import_torch():
    code = "import sys, plugins, plugins.build; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
