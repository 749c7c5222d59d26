"""``python -m plugins.selftest [--require-gpu]``: checks the GPU side of SelectiveScan on this machine.

One report per part, each executed or not (and why), with its largest error against the fp64 reference loop
(``tests/scan_grid.py``):

* **CUDA kernel**: ``libavs_scan_cuda.so`` from ``python -m plugins.build``, or, when that is missing, built here
  with CMake (only that target, into ``build/selftest/``; needs nvcc), then run through the CUDA driver (ctypes): no
  torch, TensorRT or pytest needed, only numpy. Cases: the test grid, then every distinct scan of one AVS-Mamba
  clip (:data:`AVS_MAMBA_SCANS`) with fp32 and fp16 I/O on the same inputs, each timed with CUDA events and
  reported as achieved GB/s against the device's peak memory bandwidth (the scan is memory-bound: it reads u,
  delta, B and C and writes y once, :func:`scan_bytes`).
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
from typing import Callable, NamedTuple, Optional

import numpy as np

import plugins
from runtime.gpu import load_driver, probe_gpu

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "test_scan_gpu.py"
BUILD_DIR = REPO / "build" / "selftest"
TOLERANCE = {np.float32: (1e-4, 1e-4), np.float16: (2e-3, 2e-3)}   # (rtol, atol): plugins/selective_scan/README.md
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TIMING_REPEATS = 20          # timed launches per AVS-Mamba case, after the checked (warm-up) launch
SAMPLED_CHANNELS = 8         # channels per group checked against the fp64 loop in the AVS-Mamba cases
_CU_ATTR_MEMORY_CLOCK_KHZ, _CU_ATTR_MEMORY_BUS_BITS = 36, 37   # CUdevice_attribute values (cuda.h)


class AvsMambaScan(NamedTuple):
    """One distinct selective-scan call of AVS-Mamba: shapes as the op sees them (D = K * d_inner, G = K)."""

    where: str
    batch: int
    dim: int
    length: int
    groups: int
    calls: int     # calls of this shape per clip


#: Every distinct scan of one clip of ``avs-mamba-*`` at 224 x 224, T = 5 (d_inner 512, N = 16; every call has D
#: and delta_bias, softplus, no z): res2..res5 are 56^2, 28^2, 14^2, 7^2 tokens per frame. Recorded from
#: ``AVSMamba.fuse_features``; ``tests/test_selftest_timing.py`` records them again from the model and compares.
AVS_MAMBA_RESOLUTION, AVS_MAMBA_FRAMES, AVS_MAMBA_DSTATE = 224, 5, 16
AVS_MAMBA_SCANS = (
    AvsMambaScan("MTE VSS, per frame over res3|res4|res5", 5, 2048, 1029, 4, 2),
    AvsMambaScan("MTE Temporal Mamba, T x (res3|res4|res5)", 1, 4096, 5145, 8, 2),
    AvsMambaScan("MAD frame-level V2A, res3 + audio", 5, 2048, 785, 4, 2),
    AvsMambaScan("MAD frame-level V2A, res4 + audio", 5, 2048, 197, 4, 2),
    AvsMambaScan("MAD frame-level V2A, res5 + audio", 5, 2048, 50, 4, 2),
    AvsMambaScan("MAD temporal V2A + CIP A2V, T x res3 + T audio", 1, 2048, 3925, 4, 3),
    AvsMambaScan("MAD temporal V2A + CIP A2V, T x res4 + T audio", 1, 2048, 985, 4, 3),
    AvsMambaScan("MAD temporal V2A + CIP A2V, T x res5 + T audio", 1, 2048, 250, 4, 3),
    AvsMambaScan("CIP A2V, T audio + T x res2", 1, 2048, 15685, 4, 1),
    AvsMambaScan("CIP Mamba3D, T x res2", 1, 4096, 15680, 8, 1),
    AvsMambaScan("CIP Mamba3D, T x res3", 1, 4096, 3920, 8, 1),
    AvsMambaScan("CIP Mamba3D, T x res4", 1, 4096, 980, 8, 1),
    AvsMambaScan("CIP Mamba3D, T x res5", 1, 4096, 245, 8, 1),
)


def scan_bytes(batch: int, dim: int, length: int, dstate: int, groups: int, itemsize: int, with_z: bool = False,
               with_d: bool = True, with_bias: bool = True) -> int:
    """The bytes one scan must move at least: u, delta (and z) read and y written, (Bt, D, L) each; B and C read,
    (Bt, G, N, L) each (``groups`` 0 is the ungrouped form, G = 1); A, D and delta_bias read, fp32.

    Args:
        itemsize: bytes per element of the data tensors (4 for fp32, 2 for fp16 I/O).
    """
    rows = batch * dim * length * itemsize
    states = batch * max(groups, 1) * dstate * length * itemsize
    params = 4 * dim * (dstate + int(with_d) + int(with_bias))
    return (3 + int(with_z)) * rows + 2 * states + params


def peak_bandwidth(memory_clock_khz: int, bus_width_bits: int) -> Optional[float]:
    """Peak memory bandwidth in bytes/s from the driver's memory clock (kHz) and bus width (bits), double data rate;
    None when the driver reports 0 for either (some integrated GPUs)."""
    if memory_clock_khz <= 0 or bus_width_bits <= 0:
        return None
    return memory_clock_khz * 1e3 * bus_width_bits / 8 * 2


class ScanParams(ctypes.Structure):
    """ctypes mirror of avs::SelectiveScanParams (plugins/selective_scan/selectiveScanParams.h)."""

    _fields_ = [("batch", ctypes.c_int32), ("dim", ctypes.c_int32), ("seqlen", ctypes.c_int32),
                ("dstate", ctypes.c_int32), ("ngroups", ctypes.c_int32), ("deltaSoftplus", ctypes.c_bool),
                ("dataType", ctypes.c_int32)] + [(name, ctypes.c_void_p) for name in (
                    "u", "delta", "A", "B", "C", "D", "z", "deltaBias", "y")]


class DriverMemory:
    """Device buffers, attributes and event timing through the CUDA driver API; the launcher's runtime API runs in
    the same primary context (and on the same legacy default stream, ``None``)."""

    def __init__(self, driver: ctypes.CDLL, ordinal: int = 0):
        self.cu, self.pointers = driver, []
        u64p = ctypes.POINTER(ctypes.c_uint64)
        driver.cuMemAlloc_v2.argtypes = [u64p, ctypes.c_size_t]
        driver.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        driver.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        driver.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        driver.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        driver.cuEventCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        driver.cuEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        driver.cuEventSynchronize.argtypes = [ctypes.c_void_p]
        driver.cuEventElapsedTime.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p]
        driver.cuEventDestroy_v2.argtypes = [ctypes.c_void_p]
        device, context = ctypes.c_int(0), ctypes.c_void_p()
        self._check(driver.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
        self.device = device
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

    def bandwidth(self) -> Optional[float]:
        """The device's peak memory bandwidth in bytes/s (:func:`peak_bandwidth`), or None when the driver does not
        report its memory clock and bus width (a figure for the report only: never an error)."""
        values = []
        for attribute in (_CU_ATTR_MEMORY_CLOCK_KHZ, _CU_ATTR_MEMORY_BUS_BITS):
            value = ctypes.c_int(0)
            if self.cu.cuDeviceGetAttribute(ctypes.byref(value), attribute, self.device) != 0:
                return None
            values.append(value.value)
        return peak_bandwidth(*values)

    def time_ms(self, launch: Callable[[], int], repeats: int) -> float:
        """Mean milliseconds of one ``launch()`` (enqueues on the default stream, returns a cudaError value) over
        ``repeats`` back-to-back launches between two CUDA events."""
        start, end = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.cu.cuEventCreate(ctypes.byref(start), 0), "cuEventCreate")
        try:
            self._check(self.cu.cuEventCreate(ctypes.byref(end), 0), "cuEventCreate")
            self._check(self.cu.cuEventRecord(start, None), "cuEventRecord")
            for _ in range(repeats):
                status = launch()
                if status != 0:
                    raise RuntimeError(f"avsSelectiveScanCuda returned cudaError {status} in a timed launch")
            self._check(self.cu.cuEventRecord(end, None), "cuEventRecord")
            self._check(self.cu.cuEventSynchronize(end), "cuEventSynchronize (a timed kernel failed)")
            elapsed = ctypes.c_float(0.0)
            self._check(self.cu.cuEventElapsedTime(ctypes.byref(elapsed), start, end), "cuEventElapsedTime")
            return elapsed.value / repeats
        finally:
            for event in (start, end):
                if event.value:
                    self.cu.cuEventDestroy_v2(event)

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


def cuda_library(arch: str | None = None) -> tuple[str | None, str]:
    """``(path, "")`` of the CUDA launcher library, built here with CMake when missing (for GPU architecture
    ``arch``, e.g. "90", when given; else CMake's default list); else ``(None, why)``."""
    try:
        return plugins.cuda_library_path(), ""
    except FileNotFoundError:
        pass
    cmake = shutil.which("cmake")
    if cmake is None:
        return None, f"{plugins.PARTS['scan_cuda'].library} is not built and CMake is missing to build it"
    print(f"building {plugins.PARTS['scan_cuda'].library} with CMake into {BUILD_DIR} ...", flush=True)
    configure = [cmake, "-S", str(REPO / "plugins"), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"]
    configure += [f"-DCMAKE_CUDA_ARCHITECTURES={arch}"] if arch else []
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
    """tests/scan_grid.py's grid (every scan backend runs it), as make_inputs kwargs."""
    from tests.scan_grid import GRID, grid_flags

    return [dict(batch=2 if length < 100 else 1, dim=8, length=length, dstate=dstate, groups=groups,
                 **grid_flags(index, length)) for index, (length, dstate, groups) in enumerate(GRID)]


def avs_mamba_case(scan: AvsMambaScan) -> dict:
    """make_inputs kwargs of an AVS-Mamba scan (D, delta_bias, softplus, no z), drawn as fp16 so that the same
    values run with fp32 and fp16 I/O."""
    return dict(batch=scan.batch, dim=scan.dim, length=scan.length, dstate=AVS_MAMBA_DSTATE, groups=scan.groups,
                with_z=False, dtype=np.float16)


def sample_channels(dim: int, groups: int, per_group: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted channel indices: ``per_group`` of every group (its first, its last, random ones between), or all D
    when a group has no more than ``per_group``. Every group keeps its B and C, so :func:`sampled_reference` can
    scan the selection as a (Bt, G * per_group, L) problem."""
    size = dim // max(groups, 1)
    if size <= per_group:
        return np.arange(dim)
    inner = [rng.choice(np.arange(1, size - 1), per_group - 2, replace=False) for _ in range(max(groups, 1))]
    return np.concatenate([np.sort(np.r_[0, size - 1, rest]) + g * size for g, rest in enumerate(inner)])


def sampled_reference(data: dict, channels: np.ndarray, softplus: bool) -> np.ndarray:
    """The fp64 loop (``tests/scan_grid.py: scan_fp64``) on ``channels`` of ``data`` only, over the whole L:
    (Bt, len(channels), L) float64, at a fraction of the full reference's time and memory."""
    from tests.scan_grid import scan_fp64

    rows, per_channel = ("u", "delta", "z"), ("A", "D", "delta_bias")
    picked = {k: None if v is None else v[:, channels] if k in rows else v[channels] if k in per_channel else v
              for k, v in data.items()}
    return scan_fp64(*(picked[k] for k in NAMES), delta_softplus=softplus)


def _case_name(case: dict) -> str:
    flags = [label for name, label in (("z", "z"), ("d", "D"), ("bias", "bias")) if case.get(f"with_{name}", True)]
    flags += ["softplus"] if case.get("softplus", True) else []
    return (f"B={case['batch']} D={case['dim']} L={case['length']} N={case['dstate']} G={case['groups']} "
            f"{np.dtype(case['dtype']).name} {'+'.join(flags) or '-'}")


def _upload(memory: DriverMemory, data: dict, case: dict) -> tuple[ScanParams, int]:
    """``data`` on the device and the launcher's parameters for it: (params, device pointer of y)."""
    pointers = {name: memory.upload(data[name]) for name in NAMES}
    y = memory.empty(data["u"].nbytes)
    params = ScanParams(batch=case["batch"], dim=case["dim"], seqlen=case["length"], dstate=case["dstate"],
                        ngroups=case["groups"] or 1, deltaSoftplus=case.get("softplus", True),
                        dataType=1 if data["u"].dtype == np.float16 else 0, y=y, deltaBias=pointers["delta_bias"],
                        **{k: pointers[k] for k in NAMES[:7]})
    return params, y


def _within(out: np.ndarray, expected: np.ndarray, dtype: type) -> tuple[bool, float]:
    """(every element within the README's tolerance for ``dtype`` I/O, largest absolute error)."""
    rtol, atol = TOLERANCE[dtype]
    err = np.abs(out.astype(np.float64) - expected)
    return bool(np.isfinite(out).all() and np.all(err <= atol + rtol * np.abs(expected))), float(err.max())


def _check_grid(memory: DriverMemory, launch, worst: dict[type, float]) -> bool:
    """The test grid, every output element against the fp64 loop; True when a case failed."""
    from tests.scan_grid import make_inputs, scan_fp64

    failed = False
    for index, case in enumerate(scan_cases()):
        data = make_inputs(np.random.default_rng(index), **case)
        params, y = _upload(memory, data, case)
        status = launch(ctypes.byref(params), None)
        if status != 0:
            raise RuntimeError(f"{_case_name(case)}: avsSelectiveScanCuda returned cudaError {status}")
        out = memory.download(y, data["u"])
        memory.free()
        expected = scan_fp64(*(data[k] for k in NAMES), delta_softplus=case.get("softplus", True))
        ok, err = _within(out, expected, case["dtype"])
        worst[case["dtype"]] = max(worst.get(case["dtype"], 0.0), err)
        failed |= not ok
        print(f"  {_case_name(case)}: max abs error {err:.2e} {'ok' if ok else 'ABOVE TOLERANCE'}")
    return failed


def _check_avs_mamba(memory: DriverMemory, launch, worst: dict[type, float]) -> tuple[bool, str]:
    """Every AVS-Mamba scan with fp32 and fp16 I/O: sampled channels against the fp64 loop, fp16 output equal to the
    fp32 output rounded (README "Tolerances"), CUDA-event time, GB/s; (True when a case failed, summary)."""
    from tests.scan_grid import make_inputs

    bandwidth = memory.bandwidth()
    peak = f"{bandwidth / 1e9:.0f} GB/s" if bandwidth else "not reported by the driver"
    print(f"  AVS-Mamba's scans ({AVS_MAMBA_RESOLUTION}x{AVS_MAMBA_RESOLUTION}, T={AVS_MAMBA_FRAMES}), "
          f"{SAMPLED_CHANNELS} channels per group checked, mean of {TIMING_REPEATS} launches; peak memory "
          f"bandwidth {peak}:")
    failed, per_clip, best = False, {np.float32: 0.0, np.float16: 0.0}, 0.0
    for index, scan in enumerate(AVS_MAMBA_SCANS):
        case = avs_mamba_case(scan)
        rng = np.random.default_rng(1000 + index)
        values = make_inputs(rng, **case)
        channels = sample_channels(scan.dim, scan.groups, SAMPLED_CHANNELS, rng)
        expected = sampled_reference(values, channels, softplus=True)
        outs = {}
        for dtype in (np.float32, np.float16):
            data = {k: v if v is None or v.dtype == np.float32 else v.astype(dtype) for k, v in values.items()}
            params, y = _upload(memory, data, case)
            status = launch(ctypes.byref(params), None)
            if status != 0:
                raise RuntimeError(f"{scan.where}: avsSelectiveScanCuda returned cudaError {status}")
            outs[dtype] = memory.download(y, data["u"])
            ms = memory.time_ms(lambda: launch(ctypes.byref(params), None), TIMING_REPEATS)
            memory.free()
            ok, err = _within(outs[dtype][:, channels], expected, dtype)
            worst[dtype] = max(worst.get(dtype, 0.0), err)
            failed |= not ok
            moved = scan_bytes(scan.batch, scan.dim, scan.length, AVS_MAMBA_DSTATE, scan.groups,
                               np.dtype(dtype).itemsize)
            rate = moved / (ms * 1e-3)
            best = max(best, rate)
            per_clip[dtype] += ms * scan.calls
            share = f" = {rate / bandwidth:.0%} of peak" if bandwidth else ""
            print(f"    {scan.where} (x{scan.calls} per clip): B={scan.batch} D={scan.dim} L={scan.length} "
                  f"G={scan.groups} {np.dtype(dtype).name}: max abs error {err:.2e} on {len(channels)} of "
                  f"{scan.dim} channels {'ok' if ok else 'ABOVE TOLERANCE'}; {ms:.3f} ms, {moved / 1e6:.1f} MB, "
                  f"{rate / 1e9:.0f} GB/s{share}")
        rounded = outs[np.float32].astype(np.float16)
        if not np.array_equal(outs[np.float16].view(np.uint16), rounded.view(np.uint16)):
            failed = True
            print(f"    {scan.where}: the fp16 output differs from the fp32 output rounded to fp16 in "
                  f"{int(np.count_nonzero(outs[np.float16] != rounded))} elements (the state must stay fp32)")
    summary = (f"one AVS-Mamba clip's {sum(s.calls for s in AVS_MAMBA_SCANS)} scans: {per_clip[np.float32]:.2f} ms "
               f"fp32, {per_clip[np.float16]:.2f} ms fp16; best {best / 1e9:.0f} GB/s"
               + (f" of {peak} peak" if bandwidth else ""))
    return failed, summary


def check_cuda_kernel(arch: str | None = None) -> Part:
    """Run the launcher on :func:`scan_cases` and :data:`AVS_MAMBA_SCANS`, compare with the fp64 loop, time the
    AVS-Mamba scans. ``arch``: the GPU architecture to build for when the library is missing (see cuda_library)."""
    part = Part("CUDA kernel")
    library, why = cuda_library(arch)
    if library is None:
        part.detail = why
        return part
    sys.path.insert(0, str(REPO))
    launch = ctypes.CDLL(library).avsSelectiveScanCuda
    launch.argtypes, launch.restype = [ctypes.POINTER(ScanParams), ctypes.c_void_p], ctypes.c_int32
    worst: dict[type, float] = {}
    memory = None
    try:
        memory = DriverMemory(load_driver())
        part.failed = _check_grid(memory, launch, worst)
        failed, summary = _check_avs_mamba(memory, launch, worst)
        part.failed |= failed
    except RuntimeError as exc:
        part.executed, part.failed, part.detail = True, True, str(exc)
        return part
    finally:
        if memory is not None:
            memory.free()
    part.executed = True
    part.detail = (f"{len(scan_cases())} grid cases and {2 * len(AVS_MAMBA_SCANS)} AVS-Mamba cases, "
                   f"{Path(library).name}; max abs error " + ", ".join(
                       f"{np.dtype(k).name} {v:.2e} (tolerance {TOLERANCE[k][1]:g} + {TOLERANCE[k][0]:g} |ref|)"
                       for k, v in worst.items()) + f"; {summary}")
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
    parts = [check_cuda_kernel(gpu.compute_capability.replace(".", "")), check_tensorrt_plugin()]
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
