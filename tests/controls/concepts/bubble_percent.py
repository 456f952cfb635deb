"""Mistake: the bubble as a percentage."""


def bubble_fraction(n_stages, n_microbatches):
    return 100 * (n_stages - 1) / (n_microbatches + n_stages - 1)
