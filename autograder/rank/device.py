"""Which device and backend a rank uses: one GPU per process by LOCAL_RANK with NCCL, else the CPU with gloo.

Pure functions of plain values, shared by the rank drivers and the harness (autograder.policy),
so the CUDA/NCCL branch is tested on CPU machines by passing what a GPU host would have.
"""
from __future__ import annotations


def device_name(local_rank: int, cuda_available: bool) -> str:
    """One GPU per process, chosen by LOCAL_RANK (never RANK: ranks count across nodes)."""
    return f"cuda:{local_rank}" if cuda_available else "cpu"


def backend_for(device: str) -> str:
    """NCCL drives GPUs; gloo is the CPU backend."""
    return "nccl" if device.startswith("cuda") else "gloo"


def ddp_device_ids(device: str) -> list[int] | None:
    """DDP's device_ids: the one GPU on CUDA; must be None for CPU modules."""
    return [int(device.split(":")[1])] if device.startswith("cuda") else None
