"""Mistake: the bubble as (p - 1)/m, idle time over busy time instead of over the whole step."""


def bubble_fraction(n_stages, n_microbatches):
    return (n_stages - 1) / n_microbatches
