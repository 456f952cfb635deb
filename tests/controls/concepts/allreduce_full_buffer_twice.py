"""Mistake: the full buffer sent twice (2 n), whatever the number of ranks."""


def ring_allreduce_bytes(n_bytes, world_size):
    return 2 * n_bytes if world_size > 1 else 0
