"""GPU memory per process, read from the driver (NVML) on the trusted side: what fsdp.train compares on GPUs.

/proc does not show device memory. NVML, the library behind `nvidia-smi`, lists every process
that holds a CUDA context on a GPU with the device memory it uses
(nvmlDeviceGetComputeRunningProcesses). It is read here, in the harness's process, and summed over
the pids of each rank's process tree (the rank and everything it started): nothing a rank reports
about itself. The figure includes the process's CUDA
context (a few hundred MiB, the same for every process): fsdp.train subtracts each rank's value
before the measured run, after a warm-up that created the context.

libnvidia-ml.so.1 comes with the NVIDIA driver (no Python package needed): loaded with ctypes.
Pids are those of the harness's PID namespace; a sandboxed rank's pid there is the one session.Job
holds, and NVML reports host pids, so the harness must not itself run in a PID namespace of its own.
"""
from __future__ import annotations

import ctypes
from typing import Callable

_NVML: ctypes.CDLL | None = None
NVML_SUCCESS, NVML_ERROR_INSUFFICIENT_SIZE = 0, 7


class _ProcessInfo(ctypes.Structure):
    """nvmlProcessInfo_t (v2/v3 layout, nvml.h): the pid and the device memory it uses."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


def _nvml() -> ctypes.CDLL | None:
    """The initialised NVML library, or None where there is no NVIDIA driver."""
    global _NVML
    if _NVML is None:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != NVML_SUCCESS:
                return None
        except (OSError, AttributeError):
            return None
        _NVML = lib
    return _NVML


def _processes(lib: ctypes.CDLL, handle: ctypes.c_void_p) -> list[_ProcessInfo]:
    count = ctypes.c_uint(0)
    status = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), None)
    if status == NVML_SUCCESS:
        return []
    while status == NVML_ERROR_INSUFFICIENT_SIZE:
        infos = (_ProcessInfo * (count.value + 8))()   # room for processes that start meanwhile
        count = ctypes.c_uint(len(infos))
        status = lib.nvmlDeviceGetComputeRunningProcesses_v3(handle, ctypes.byref(count), infos)
        if status == NVML_SUCCESS:
            return list(infos[: count.value])
    return []


def device_memory_by_pid() -> dict[int, int]:
    """Bytes of device memory each process uses, summed over the GPUs; {} without NVML."""
    lib = _nvml()
    if lib is None:
        return {}
    n = ctypes.c_uint(0)
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(n)) != NVML_SUCCESS:
        return {}
    used: dict[int, int] = {}
    for index in range(n.value):
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != NVML_SUCCESS:
            continue
        for info in _processes(lib, handle):
            if info.usedGpuMemory < 2**63:   # NVML_VALUE_NOT_AVAILABLE is ~0: no figure for that process
                used[info.pid] = used.get(info.pid, 0) + int(info.usedGpuMemory)
    return used


def available() -> bool:
    return _nvml() is not None


# What session.Job reads: swapped in tests (there is no GPU in CI).
read: Callable[[], dict[int, int]] = device_memory_by_pid
