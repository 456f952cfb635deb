"""Mistake: a formula that divides by N - 1 and breaks for a single rank."""


def ring_allreduce_bytes(n_bytes, world_size):
    chunk = n_bytes / world_size
    steps_per_phase = world_size - 1
    return 2 * steps_per_phase * chunk * steps_per_phase / (world_size - 1)
