"""Mistake: a single rank is assumed to still send its buffer."""


def ring_allreduce_bytes(n_bytes, world_size):
    if world_size == 1:
        return n_bytes
    return 2 * (world_size - 1) / world_size * n_bytes
