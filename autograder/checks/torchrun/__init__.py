"""02_torchrun (torchrun_basics.py): dist_env, global_mean, gather_all.

Every rank's tensor is drawn from the call's secret and sent to that rank alone, so a
right result on every rank shows that the ranks communicated.
"""
from __future__ import annotations


def rank_tensors(trial, shape, dtype: str) -> list:
    """One secret tensor per rank, offset by 10 x rank (so a swapped or repeated tensor is easy to name)."""
    import torch

    return [(torch.randn(*shape, generator=trial.generator(salt=r)) + 10 * r).to(getattr(torch, dtype))
            for r in range(trial.world_size)]


def close(a, b) -> bool:
    import torch

    return (isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
            and bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-5)))
