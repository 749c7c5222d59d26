"""``python -m plugins.selftest [--require-gpu]``: checks the GPU side of SelectiveScan on this machine.

One report per part, each executed or not (and why), with its largest error against the fp64 reference loop
(``tests/scan_grid.py``):

* **CUDA kernel**: ``libavs_scan_cuda.so`` from ``python -m plugins.build``, or, when that is missing, built here
  with CMake (only that target, into ``build/selftest/``; needs nvcc), then run on a grid of shapes through the CUDA
  driver (ctypes): no torch, TensorRT or pytest needed, only numpy.
* **TensorRT plugin**: the plugin tests of ``tests/test_scan_gpu.py`` (pytest), when TensorRT's Python package and
  the plugin library (built by ``python -m plugins.build`` where TensorRT is installed) exist.

Exit status: 0 when nothing that ran failed; without a CUDA device it says "skipped" and exits 0. Exit 1 when a
part failed, or with ``--require-gpu`` when there is no CUDA device or the CUDA kernel was not executed.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import plugins
from runtime.gpu import load_driver, probe_gpu

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "test_scan_gpu.py"
BUILD_DIR = REPO / "build" / "selftest"
TOLERANCE = {np.float32: (1e-4, 1e-4), np.float16: (2e-3, 2e-3)}   # (rtol, atol): plugins/selective_scan/README.md
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


class ScanParams(ctypes.Structure):
    """ctypes mirror of avs::SelectiveScanParams (plugins/selective_scan/selectiveScanParams.h)."""

    _fields_ = [("batch", ctypes.c_int32), ("dim", ctypes.c_int32), ("seqlen", ctypes.c_int32),
                ("dstate", ctypes.c_int32), ("ngroups", ctypes.c_int32), ("deltaSoftplus", ctypes.c_bool),
                ("dataType", ctypes.c_int32)] + [(name, ctypes.c_void_p) for name in (
                    "u", "delta", "A", "B", "C", "D", "z", "deltaBias", "y")]


class DriverMemory:
    """Device buffers through the CUDA driver API; the launcher's runtime API runs in the same primary context."""

    def __init__(self, driver: ctypes.CDLL, ordinal: int = 0):
        self.cu, self.pointers = driver, []
        u64p = ctypes.POINTER(ctypes.c_uint64)
        driver.cuMemAlloc_v2.argtypes = [u64p, ctypes.c_size_t]
        driver.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        driver.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        driver.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        driver.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        device, context = ctypes.c_int(0), ctypes.c_void_p()
        self._check(driver.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
        self._check(driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    @staticmethod
    def _check(status: int, call: str) -> None:
        if status != 0:
            raise RuntimeError(f"{call} failed (CUresult {status})")

    def upload(self, array: np.ndarray | None) -> int | None:
        if array is None:
            return None
        array = np.ascontiguousarray(array)
        pointer = self.empty(array.nbytes)
        self._check(self.cu.cuMemcpyHtoD_v2(pointer, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")
        return pointer

    def empty(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64(0)
        self._check(self.cu.cuMemAlloc_v2(ctypes.byref(pointer), max(1, nbytes)), "cuMemAlloc")
        self.pointers.append(pointer.value)
        return pointer.value

    def download(self, pointer: int, like: np.ndarray) -> np.ndarray:
        self._check(self.cu.cuCtxSynchronize(), "cuCtxSynchronize (the kernel failed)")
        out = np.empty_like(like)
        self._check(self.cu.cuMemcpyDtoH_v2(out.ctypes.data, pointer, out.nbytes), "cuMemcpyDtoH")
        return out

    def free(self) -> None:
        for pointer in self.pointers:
            self.cu.cuMemFree_v2(pointer)
        self.pointers.clear()


@dataclass
class Part:
    """What one part of the self-test did."""
    label: str
    executed: bool = False
    failed: bool = False
    detail: str = ""

    def line(self) -> str:
        state = ("FAILED" if self.failed else "passed") if self.executed else "not executed"
        return f"{self.label}: {state}" + (f" ({self.detail})" if self.detail else "")


def cuda_library() -> tuple[str | None, str]:
    """``(path, "")`` of the CUDA launcher library, built here with CMake when missing; else ``(None, why)``."""
    try:
        return plugins.cuda_library_path(), ""
    except FileNotFoundError:
        pass
    cmake = shutil.which("cmake")
    if cmake is None:
        return None, f"{plugins.PARTS['scan_cuda'].library} is not built and CMake is missing to build it"
    print(f"building {plugins.PARTS['scan_cuda'].library} with CMake into {BUILD_DIR} ...", flush=True)
    configure = [cmake, "-S", str(REPO / "plugins"), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"]
    build = [cmake, "--build", str(BUILD_DIR), "--target", "avs_scan_cuda", "--parallel"]
    for step, cmd in (("CMake configure", configure), ("CMake build", build)):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            return None, f"{step} failed ({' '.join(cmd)}):\n{tail}"
        entry = {p["name"]: p for p in json.loads((BUILD_DIR / "avs_parts.json").read_text())}["scan_cuda"]
        if entry["status"] != "built":
            return None, f"CMake skipped it: {entry['reason']}"
    return entry["library"], ""


def scan_cases() -> list[dict]:
    """tests/scan_grid.py's grid (every scan backend runs it) and an AVS-Mamba-sized call, as make_inputs kwargs."""
    from tests.scan_grid import GRID, grid_flags

    cases = [dict(batch=2 if length < 100 else 1, dim=8, length=length, dstate=dstate, groups=groups,
                  **grid_flags(index, length)) for index, (length, dstate, groups) in enumerate(GRID)]
    return cases + [dict(batch=2, dim=96, length=3920, dstate=16, groups=6, with_z=False, dtype=dtype)
                    for dtype in (np.float32, np.float16)]


def _case_name(case: dict) -> str:
    flags = [label for name, label in (("z", "z"), ("d", "D"), ("bias", "bias")) if case.get(f"with_{name}", True)]
    flags += ["softplus"] if case.get("softplus", True) else []
    return (f"B={case['batch']} D={case['dim']} L={case['length']} N={case['dstate']} G={case['groups']} "
            f"{np.dtype(case['dtype']).name} {'+'.join(flags) or '-'}")


def check_cuda_kernel() -> Part:
    """Run the launcher on :func:`scan_cases` and compare each output with the fp64 loop."""
    part = Part("CUDA kernel")
    library, why = cuda_library()
    if library is None:
        part.detail = why
        return part
    sys.path.insert(0, str(REPO))
    from tests.scan_grid import make_inputs, scan_fp64

    launch = ctypes.CDLL(library).avsSelectiveScanCuda
    launch.argtypes, launch.restype = [ctypes.POINTER(ScanParams), ctypes.c_void_p], ctypes.c_int32
    cases = scan_cases()
    worst: dict[type, float] = {}
    memory = None
    try:
        memory = DriverMemory(load_driver())
        for index, case in enumerate(cases):
            data = make_inputs(np.random.default_rng(index), **case)
            softplus, dtype = case.get("softplus", True), case["dtype"]
            pointers = {name: memory.upload(data[name]) for name in NAMES}
            y = memory.empty(data["u"].nbytes)
            params = ScanParams(batch=case["batch"], dim=case["dim"], seqlen=case["length"], dstate=case["dstate"],
                                ngroups=case["groups"] or 1, deltaSoftplus=softplus,
                                dataType=1 if dtype == np.float16 else 0, y=y, deltaBias=pointers["delta_bias"],
                                **{k: pointers[k] for k in NAMES[:7]})
            status = launch(ctypes.byref(params), None)
            if status != 0:
                raise RuntimeError(f"{_case_name(case)}: avsSelectiveScanCuda returned cudaError {status}")
            out = memory.download(y, data["u"]).astype(np.float64)
            memory.free()
            expected = scan_fp64(*(data[k] for k in NAMES), delta_softplus=softplus)
            rtol, atol = TOLERANCE[dtype]
            err = np.abs(out - expected)
            ok = bool(np.isfinite(out).all() and np.all(err <= atol + rtol * np.abs(expected)))
            worst[dtype] = max(worst.get(dtype, 0.0), float(err.max()))
            part.failed |= not ok
            print(f"  {_case_name(case)}: max abs error {err.max():.2e} {'ok' if ok else 'ABOVE TOLERANCE'}")
    except RuntimeError as exc:
        part.executed, part.failed, part.detail = True, True, str(exc)
        return part
    finally:
        if memory is not None:
            memory.free()
    part.executed = True
    part.detail = f"{len(cases)} cases, {Path(library).name}; max abs error " + ", ".join(
        f"{np.dtype(k).name} {v:.2e} (tolerance {TOLERANCE[k][1]:g} + {TOLERANCE[k][0]:g} |ref|)"
        for k, v in worst.items())
    return part


class _Outcomes:
    """pytest plugin: outcome counts and skip reasons of the plugin tests."""

    def __init__(self):
        self.counts, self.skips = Counter(), set()

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and report.passed:
            return
        if report.skipped:
            self.counts["skipped"] += 1
            self.skips.add(str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped")
        else:
            self.counts["failed" if report.failed else "passed"] += 1


def check_tensorrt_plugin() -> Part:
    """The plugin tests of tests/test_scan_gpu.py, when TensorRT, the plugin library and the test tools exist."""
    part = Part("TensorRT plugin")
    entry = plugins.build_status().get("trt_plugin", {})
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        part.detail = f"TensorRT's Python package is not installed ({exc})"
        return part
    if entry.get("status") != "built":
        part.detail = f"the plugin library is not built ({entry.get('reason') or entry.get('status')})"
        return part
    try:
        import onnxscript  # noqa: F401  (tests/test_scan_gpu.py imports the op's ONNX definition)
        import pytest
        import torch  # noqa: F401  (the tests' reference)
    except ImportError as exc:
        part.detail = f"{exc.name} is missing to run {TESTS.relative_to(REPO)}: pip install -e '.[dev]'"
        return part
    outcomes = _Outcomes()
    code = pytest.main(["-m", "gpu", "-k", "test_trt_", "-q", "-rfE", "-p", "no:cacheprovider", f"--rootdir={REPO}",
                        str(TESTS)], plugins=[outcomes])
    part.executed = outcomes.counts["passed"] + outcomes.counts["failed"] > 0
    part.failed = code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    part.detail = ", ".join(f"{outcomes.counts[k]} {k}" for k in ("passed", "failed", "skipped") if outcomes.counts[k])
    part.detail += "".join(f"; skipped: {reason}" for reason in sorted(outcomes.skips))
    return part


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit 1 when there is no CUDA device or the CUDA kernel could not be executed")
    args = parser.parse_args(argv)

    gpu, problem = probe_gpu()
    if gpu is None:
        print(f"SelectiveScan GPU self-test: skipped ({problem})")
        return 1 if args.require_gpu else 0
    print(f"SelectiveScan GPU self-test on {gpu.name} (compute capability {gpu.compute_capability})")
    parts = [check_cuda_kernel(), check_tensorrt_plugin()]
    print("SelectiveScan GPU self-test:")
    for part in parts:
        print(f"  {part.line()}")
    if any(part.failed for part in parts):
        print("FAILED")
        return 1
    if args.require_gpu and not parts[0].executed:
        print("FAILED: --require-gpu, but the CUDA kernel was not executed")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
