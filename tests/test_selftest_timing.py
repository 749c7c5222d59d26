"""The GPU self-test's host side, without a GPU (``plugins/selftest.py``): AVS-Mamba's scan shapes, the
bytes/bandwidth arithmetic, the sampled reference, and the AVS-Mamba pass run on a host stand-in for the CUDA driver
and kernel. Timing the real kernel needs a CUDA device (the ``gpu`` test at the end)."""
from __future__ import annotations

import ctypes
import functools
import time
from collections import Counter

import numpy as np
import pytest
import torch

from plugins import selftest
from plugins.selftest import (AVS_MAMBA_DSTATE, AVS_MAMBA_FRAMES, AVS_MAMBA_RESOLUTION, AVS_MAMBA_SCANS, NAMES,
                              peak_bandwidth, sample_channels, sampled_reference, scan_bytes)
from tests.scan_grid import make_inputs, scan_fp64


def _recorded_scans(name: str):
    """(the scan calls of one clip of registered model ``name``, its config): built and run on the meta device,
    shapes only."""
    import export.models.avs_mamba as avs_mamba
    from export.models._registry import model_builder

    calls: Counter = Counter()

    def record(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        groups = B.shape[1] if B.dim() == 4 else 1
        calls[(u.shape[0], u.shape[1], u.shape[2], A.shape[1], groups, z is not None, D is not None,
               delta_bias is not None, bool(delta_softplus))] += 1
        return torch.empty_like(u)

    with torch.device("meta"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(avs_mamba, "selective_scan", record)
        model = model_builder(name)()
        cfg = model.cfg
        t, r = cfg.frames, cfg.resolution
        maps = [torch.empty(t, cfg.dim, r // s, r // s) for s in (4, 8, 16, 32)]
        with torch.no_grad():
            model.fuse_features(torch.empty(t, cfg.dim), maps)
    return calls, cfg


@pytest.mark.parametrize("name", ["avs-mamba-s4-pvt", "avs-mamba-s4-r50"])
def test_avs_mamba_scans_are_the_models(name):
    """The self-test's table is exactly the scans the variant runs per clip at its export size."""
    calls, cfg = _recorded_scans(name)
    table = Counter({(s.batch, s.dim, s.length, AVS_MAMBA_DSTATE, s.groups, False, True, True, True): s.calls
                     for s in AVS_MAMBA_SCANS})
    assert len(table) == len(AVS_MAMBA_SCANS), "AVS_MAMBA_SCANS lists a shape twice"
    assert calls == table
    assert (cfg.resolution, cfg.frames, cfg.d_state) == (AVS_MAMBA_RESOLUTION, AVS_MAMBA_FRAMES, AVS_MAMBA_DSTATE)


@pytest.mark.parametrize("groups, with_z, dtype", [(4, False, np.float32), (0, True, np.float16),
                                                    (2, True, np.float32)])
def test_scan_bytes_is_every_tensor_read_once_and_y_written(groups, with_z, dtype):
    data = make_inputs(np.random.default_rng(0), batch=3, dim=8, length=7, dstate=5, groups=groups, with_z=with_z,
                       dtype=dtype)
    expected = sum(v.nbytes for v in data.values() if v is not None) + data["u"].nbytes   # + y, u's size and type
    assert scan_bytes(3, 8, 7, 5, groups, np.dtype(dtype).itemsize, with_z=with_z) == expected


def test_scan_bytes_of_the_largest_avs_mamba_scan():
    """CIP Mamba3D at res2, fp32: u, delta, y (1, 4096, 15680) and B, C (1, 8, 16, 15680), plus A, D, bias."""
    assert scan_bytes(1, 4096, 15680, 16, 8, 4) == 3 * 4096 * 15680 * 4 + 2 * 8 * 16 * 15680 * 4 + 4096 * 18 * 4


def test_peak_bandwidth_from_the_driver_attributes():
    # H100 SXM5's driver attributes (2619 MHz HBM3, 5120-bit bus): NVIDIA's data sheet says 3.35 TB/s.
    assert peak_bandwidth(2_619_000, 5120) == pytest.approx(3.352e12, rel=1e-3)
    assert peak_bandwidth(0, 256) is None and peak_bandwidth(1_000_000, 0) is None


def test_sample_channels_takes_every_groups_ends():
    rng = np.random.default_rng(3)
    picked = sample_channels(64, 4, 5, rng)
    assert list(picked) == sorted(set(picked)) and len(picked) == 20
    for g in range(4):
        mine = picked[(picked >= 16 * g) & (picked < 16 * (g + 1))]
        assert len(mine) == 5 and mine[0] == 16 * g and mine[-1] == 16 * g + 15
    assert list(sample_channels(8, 4, 5, rng)) == list(range(8))     # groups of 2 channels: all of them


@pytest.mark.parametrize("groups", [0, 4])
def test_sampled_reference_equals_the_full_loop_on_those_channels(groups):
    data = make_inputs(np.random.default_rng(1), batch=2, dim=32, length=40, dstate=4, groups=groups,
                       with_z=True, dtype=np.float16)
    channels = sample_channels(32, groups, 3, np.random.default_rng(2))
    full = scan_fp64(*(data[k] for k in NAMES), delta_softplus=True)
    np.testing.assert_array_equal(sampled_reference(data, channels, softplus=True), full[:, channels])


class _HostDriver:
    """The CUDA driver calls the self-test makes, served from host memory (no GPU): "device" pointers are host
    addresses, events read the host clock, the attributes are an H100 SXM5's. Lets the self-test's host side run."""

    def __init__(self):
        self.buffers, self.events, self.clock = {}, {}, {}
        for name in dir(self):      # partials take the ``argtypes`` the self-test sets, as ctypes functions do
            if name.startswith("cu"):
                setattr(self, name, functools.partial(getattr(self, name)))

    def _status(self, *_):
        return 0

    cuDeviceGet = cuDevicePrimaryCtxRetain = cuCtxSetCurrent = cuCtxSynchronize = _status
    cuEventSynchronize = cuEventDestroy_v2 = _status

    def cuMemAlloc_v2(self, pointer, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        pointer._obj.value = ctypes.addressof(buffer)
        self.buffers[pointer._obj.value] = buffer
        return 0

    def cuMemFree_v2(self, pointer):
        return 0 if self.buffers.pop(pointer, None) is not None else 1

    def cuMemcpyHtoD_v2(self, dst, src, nbytes):
        ctypes.memmove(dst, src, nbytes)
        return 0

    def cuMemcpyDtoH_v2(self, dst, src, nbytes):
        ctypes.memmove(dst, src, nbytes)
        return 0

    def cuDeviceGetAttribute(self, value, attribute, device):
        value._obj.value = {36: 2_619_000, 37: 5120}[attribute]
        return 0

    def cuEventCreate(self, event, flags):
        event._obj.value = len(self.events) + 1
        self.events[event._obj.value] = None
        return 0

    def cuEventRecord(self, event, stream):
        self.clock[event.value] = time.perf_counter()
        return 0

    def cuEventElapsedTime(self, ms, start, end):
        ms._obj.value = (self.clock[end.value] - self.clock[start.value]) * 1e3
        return 0


def _host_kernel(corrupt=None):
    """A stand-in for avsSelectiveScanCuda on host pointers: the fp64 loop, rounded to fp32 then to the I/O type
    (the state never leaves fp32); ``corrupt(y, params)`` may damage the output afterwards."""

    def view(address, shape, dtype):
        count = int(np.prod(shape))
        raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(address)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def launch(params_ref, stream):
        p = params_ref._obj
        dtype = np.float16 if p.dataType == 1 else np.float32
        rows, states = (p.batch, p.dim, p.seqlen), (p.batch, p.ngroups, p.dstate, p.seqlen)
        optional = {k: getattr(p, k) for k in ("D", "z", "deltaBias")}
        y = scan_fp64(view(p.u, rows, dtype), view(p.delta, rows, dtype), view(p.A, (p.dim, p.dstate), np.float32),
                      view(p.B, states, dtype), view(p.C, states, dtype),
                      optional["D"] and view(optional["D"], (p.dim,), np.float32),
                      optional["z"] and view(optional["z"], rows, dtype),
                      optional["deltaBias"] and view(optional["deltaBias"], (p.dim,), np.float32),
                      delta_softplus=p.deltaSoftplus).astype(np.float32).astype(dtype)
        if corrupt is not None:
            corrupt(y, p)
        ctypes.memmove(p.y, y.ctypes.data, y.nbytes)
        return 0

    return launch


_SMALL_SCANS = (selftest.AvsMambaScan("grouped", 2, 64, 70, 4, 2), selftest.AvsMambaScan("wide", 1, 96, 33, 8, 1))


@pytest.fixture
def small_scans(monkeypatch):
    monkeypatch.setattr(selftest, "AVS_MAMBA_SCANS", _SMALL_SCANS)
    monkeypatch.setattr(selftest, "TIMING_REPEATS", 2)


def test_avs_mamba_check_on_host_memory(small_scans, capsys):
    """The self-test's AVS-Mamba pass end to end on a host stand-in for the driver and the kernel."""
    memory = selftest.DriverMemory(_HostDriver())
    worst = {}
    failed, summary = selftest._check_avs_mamba(memory, _host_kernel(), worst)
    out = capsys.readouterr().out
    assert not failed, out
    assert set(worst) == {np.float32, np.float16} and worst[np.float32] < 1e-5
    assert "peak memory bandwidth 3352 GB/s" in out and "one AVS-Mamba clip's 3 scans" in summary
    moved = scan_bytes(2, 64, 70, AVS_MAMBA_DSTATE, 4, 2)
    assert f"{moved / 1e6:.1f} MB" in out and out.count("ok;") == 2 * len(_SMALL_SCANS)
    assert not memory.pointers and not memory.cu.buffers                # every buffer freed


@pytest.mark.parametrize("damage, message", [
    ("group0", "ABOVE TOLERANCE"),          # every group after the first wrong: the sample covers each group
    ("fp16", "differs from the fp32 output rounded"),
])
def test_avs_mamba_check_catches_a_wrong_kernel(small_scans, capsys, damage, message):
    def corrupt(y, p):
        if damage == "fp16" and p.dataType == 1:
            y[0, 0, -1] += np.float16(2e-3) * max(1.0, abs(float(y[0, 0, -1])))
        if damage == "group0" and p.ngroups > 1:
            y[:, p.dim // p.ngroups:] *= 1.5

    failed, _ = selftest._check_avs_mamba(selftest.DriverMemory(_HostDriver()), _host_kernel(corrupt), {})
    assert failed and message in capsys.readouterr().out


@pytest.mark.gpu
def test_event_timing_and_bandwidth_on_the_device():
    gpu, why = selftest.probe_gpu()
    if gpu is None:
        pytest.skip(why)
    library, why = selftest.cuda_library()
    if library is None:
        pytest.skip(why)
    launch = ctypes.CDLL(library).avsSelectiveScanCuda
    launch.argtypes, launch.restype = [ctypes.POINTER(selftest.ScanParams), ctypes.c_void_p], ctypes.c_int32
    memory = selftest.DriverMemory(selftest.load_driver())
    try:
        bandwidth = memory.bandwidth()
        assert bandwidth is None or 1e10 < bandwidth < 1e14
        case = dict(batch=1, dim=2048, length=16384, dstate=16, groups=4, with_z=False, dtype=np.float32)
        params, _ = selftest._upload(memory, make_inputs(np.random.default_rng(0), **case), case)
        memory.time_ms(lambda: launch(ctypes.byref(params), None), 1)      # warm-up: loads the kernel
        one = memory.time_ms(lambda: launch(ctypes.byref(params), None), 1)
        ten = memory.time_ms(lambda: launch(ctypes.byref(params), None), 10)
        assert one > 0 and ten > 0 and 0.2 < ten / one < 5     # a mean per launch, not a total
    finally:
        memory.free()
