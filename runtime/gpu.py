"""The GPU on this machine, asked of the CUDA driver (``libcuda``) through ctypes: no toolkit, no Python packages."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

__all__ = ["GpuInfo", "load_driver", "probe_gpu"]

_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device: what an engine is built for."""
    name: str
    compute_capability: str


def load_driver() -> Optional[ctypes.CDLL]:
    """The CUDA driver library, or None when this machine has no NVIDIA driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def probe_gpu(device: int = 0) -> tuple[Optional[GpuInfo], str]:
    """Ask the CUDA driver for GPU ``device``: ``(info, "")`` or ``(None, why)``."""
    lib = load_driver()
    if lib is None:
        return None, "no NVIDIA GPU driver on this machine (libcuda.so.1 not found)"
    rc = lib.cuInit(0)
    if rc != 0:
        return None, f"the CUDA driver found no usable GPU (cuInit returned {rc})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        return None, f"no CUDA device {device} (the driver reports {count.value})"
    handle = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(handle), device)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, len(buf), handle)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, handle)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, handle)
    return GpuInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}"), ""
