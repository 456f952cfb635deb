"""Mistake: right formula, but 0 stages or 0 microbatches are not rejected."""


def bubble_fraction(n_stages, n_microbatches):
    if n_microbatches + n_stages - 1 <= 0:
        return 0.0
    return (n_stages - 1) / (n_microbatches + n_stages - 1)
