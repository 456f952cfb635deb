"""Mistake: stages and microbatches swapped."""


def bubble_fraction(n_stages, n_microbatches):
    return (n_microbatches - 1) / (n_microbatches + n_stages - 1)
