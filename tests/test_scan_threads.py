"""The SelectiveScan ONNX Runtime op runs on the session's intra-op thread pool: ``intra_op_num_threads`` is obeyed.

Threads are watched through ``/proc/self/task`` (Linux): the thread ids alive while the scan runs, and each thread's
CPU time (utime + stime, in clock ticks).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.scan_grid import make_inputs
from tests.test_scan_native import library, scan_model  # noqa: F401  (library is a fixture)

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc/self/task")

RUNS = 5


@pytest.fixture(scope="module")
def large_scan() -> dict:
    """32 blocks of 16 channels, 2^25 state updates: 32 tasks for the pool, about 50 ms a run on one core."""
    return make_inputs(np.random.default_rng(0), batch=1, dim=512, length=4096, dstate=16, groups=4)


def _session(library_path: str, data: dict, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(library_path)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning, so the CPU time they gain is work they were given.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(scan_model(data, softplus=1).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _feeds(data: dict) -> dict:
    return {name: value for name, value in data.items() if value is not None}


def _thread_ids() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/task")}


def _cpu_ticks(tid: int) -> int:
    """utime + stime of one thread of this process; 0 once it has exited."""
    try:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    except FileNotFoundError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()     # after "pid (comm)": state is field 3, utime 14, stime 15
    return int(fields[11]) + int(fields[12])


def _watch(session: ort.InferenceSession, feeds: dict) -> tuple[set[int], dict[int, int], int]:
    """Run ``session`` RUNS times while a sampler records thread ids: (threads started meanwhile, CPU ticks each
    thread alive before gained, the calling thread's id)."""
    session.run(None, feeds)                     # first run: anything ONNX Runtime sets up lazily
    seen: set[int] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(_thread_ids())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = _thread_ids()
    caller = threading.get_native_id()
    ticks = {tid: _cpu_ticks(tid) for tid in before}
    try:
        for _ in range(RUNS):
            session.run(None, feeds)
    finally:
        stop.set()
        sampler.join()
    gained = {tid: _cpu_ticks(tid) - start for tid, start in ticks.items() if tid != sampler.native_id}
    return seen - before, gained, caller


@pytest.mark.parametrize("threads", [1, 2])
def test_scan_starts_no_thread(library, large_scan, threads):
    """The op's work goes to threads ONNX Runtime made at session creation (none at all for 1 thread)."""
    started, gained, caller = _watch(_session(library, large_scan, threads), _feeds(large_scan))
    print(f"intra_op_num_threads={threads}: CPU ticks per thread {gained}")
    assert not started, f"threads started during {RUNS} runs: {sorted(started)}"
    assert gained[caller] > 0


def test_two_threads_share_the_scan(library, large_scan):
    """With 2 intra-op threads the pool's worker computes part of the scan, next to the calling thread."""
    _, gained, caller = _watch(_session(library, large_scan, 2), _feeds(large_scan))
    workers = {tid: ticks for tid, ticks in gained.items() if tid != caller}
    print(f"caller {gained[caller]} ticks, other threads {workers}")
    assert sum(workers.values()) > 0, "no thread but the caller ran the scan with intra_op_num_threads=2"


def test_results_identical_for_any_thread_count(library, large_scan):
    feeds = _feeds(large_scan)
    outputs = {n: _session(library, large_scan, n).run(None, feeds)[0] for n in (1, 2, 3)}
    for n in (2, 3):
        np.testing.assert_array_equal(outputs[n], outputs[1], err_msg=f"{n} threads differ from 1")
