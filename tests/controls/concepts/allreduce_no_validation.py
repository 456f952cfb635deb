"""Mistake: right formula, but world_size 0 and negative sizes are not rejected."""


def ring_allreduce_bytes(n_bytes, world_size):
    if world_size < 1:
        return 0
    return 2 * (world_size - 1) / world_size * n_bytes
