"""Secret models and data for a check, drawn on the trusted side from the call's generator: each rank later receives
only its own part. Shared by every assignment whose checks train the course's models (06, 09)."""
from __future__ import annotations


def random_state(generator, spec: dict) -> dict:
    """The state dict of the EuroSATNet `spec` describes, with PyTorch's own initialisation seeded from the
    generator (so it looks like a real model's); the global RNG is left as it was (a notebook kernel's)."""
    import torch

    from ..rank.toolkit import build_model

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rank_batches(generator, world_size: int, steps: int, per_rank: int, size: int = 64) -> list[list]:
    """[rank][step] = (images, labels): each rank's own slice of each step's global batch (size x size images)."""
    import torch

    out = [[] for _ in range(world_size)]
    for _ in range(steps):
        for r in range(world_size):
            out[r].append((torch.randn(per_rank, 3, size, size, generator=generator),
                           torch.randint(0, 10, (per_rank,), generator=generator)))
    return out
