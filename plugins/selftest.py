"""``python -m plugins.selftest [--require-gpu]``: checks the GPU side of SelectiveScan on this machine.

Runs ``tests/test_scan_gpu.py`` (the CUDA kernel and the TensorRT plugin against the CPU reference) and prints one
line per part. Without a CUDA device it says so and exits 0 ("skipped"), or 1 with ``--require-gpu``. Exit status 1
also when a test fails, or with ``--require-gpu`` when the CUDA kernel could not be tested (e.g. not built).
The tests need torch, pytest and the built libraries (``python -m plugins.build``).
"""
from __future__ import annotations

import argparse
import ctypes
import sys
from collections import Counter
from pathlib import Path

import plugins

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "test_scan_gpu.py"
PARTS = {"test_cuda_": "CUDA kernel", "test_trt_": "TensorRT plugin"}


def cuda_device_problem() -> str | None:
    """None when the driver reports at least one CUDA device, else why not (asks libcuda directly, no Python deps)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    status = driver.cuInit(0)
    if status != 0:
        return f"the CUDA driver failed to initialise (CUresult {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return "the CUDA driver reports no device"
    return None


class _Outcomes:
    """pytest plugin: outcome counts and skip reasons per part."""

    def __init__(self):
        self.counts: dict[str, Counter] = {label: Counter() for label in PARTS.values()}
        self.skips: dict[str, set] = {label: set() for label in PARTS.values()}

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        label = next((lab for prefix, lab in PARTS.items() if name.startswith(prefix)), None)
        if label is None or (report.when != "call" and report.passed):
            return
        if report.skipped:
            self.counts[label]["skipped"] += 1
            self.skips[label].add(str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped")
        elif report.failed:
            self.counts[label]["failed"] += 1
        else:
            self.counts[label]["passed"] += 1


def _status_line(label: str, counts: Counter, skips: set) -> str:
    parts = [f"{counts[k]} {k}" for k in ("passed", "failed", "skipped") if counts[k]]
    line = f"  {label}: {', '.join(parts) or 'no tests ran'}"
    return line + "".join(f"\n    skipped: {reason}" for reason in sorted(skips))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugins.selftest", description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit 1 when there is no CUDA device or the CUDA kernel could not be tested")
    args = parser.parse_args(argv)

    problem = cuda_device_problem()
    if problem is not None:
        print(f"SelectiveScan GPU self-test: skipped ({problem})")
        return 1 if args.require_gpu else 0
    try:
        import pytest
        import torch  # noqa: F401  (the tests' CPU reference)
    except ImportError as e:
        print(f"SelectiveScan GPU self-test: cannot run ({e.name} is missing): pip install -e '.[dev]'")
        return 1
    if not TESTS.is_file():
        print(f"SelectiveScan GPU self-test: {TESTS} not found; run it from an avs-edge checkout")
        return 1

    status = plugins.build_status()
    for name in ("scan_cuda", "trt_plugin"):
        entry = status.get(name, {})
        reason = f" ({entry['reason']})" if entry.get("reason") else ""
        print(f"{plugins.PARTS[name].label}: {entry.get('status', 'not built')}{reason}")

    sys.path.insert(0, str(REPO))
    outcomes = _Outcomes()
    code = pytest.main(["-m", "gpu", "-q", "-rfEP", "-p", "no:cacheprovider", f"--rootdir={REPO}", str(TESTS)],
                       plugins=[outcomes])
    print("SelectiveScan GPU self-test:")
    for label in PARTS.values():
        print(_status_line(label, outcomes.counts[label], outcomes.skips[label]))
    failed = code not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    cuda_untested = outcomes.counts["CUDA kernel"]["passed"] == 0
    if failed:
        print("FAILED")
        return 1
    if args.require_gpu and cuda_untested:
        print("FAILED: --require-gpu, but the CUDA kernel was not tested")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
