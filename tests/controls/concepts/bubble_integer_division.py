"""Mistake: integer division: // instead of /."""


def bubble_fraction(n_stages, n_microbatches):
    return (n_stages - 1) // (n_microbatches + n_stages - 1)
