"""Paired speed measurements: alternate the baseline and the parallel run, judge the median of per-pair ratios.

Why paired and alternating: a shared machine's speed drifts (other jobs, turbo,
thermal limits). Timing all baseline runs first and all parallel runs after would
turn that drift into a fake speed-up or slow-down. Each pair runs its two sides
back to back, and pairs alternate which side goes first (AB, BA, AB, ...), so a
drift hits both sides alike; the median of the per-pair ratios ignores one
disturbed pair.

    from autograder.measure import paired_speedup
    result = paired_speedup(run_one_rank, run_n_ranks, repeats=3)
    result["median_ratio"]    # baseline seconds / parallel seconds: the speed-up

Callables may time themselves: if one returns a number, that number is its
duration in seconds (e.g. the slowest rank's time); otherwise the wall time of
the call is used. Code that gathers timings from several processes can use
`pair_order` to schedule the runs and `summarize` to combine them.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def pair_order(repeats: int) -> list[tuple[str, str]]:
    """The run order for `repeats` pairs: ("a", "b"), ("b", "a"), ("a", "b"), ... (a = baseline)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return [("a", "b") if i % 2 == 0 else ("b", "a") for i in range(repeats)]


def summarize(baseline_seconds: Sequence[float], parallel_seconds: Sequence[float],
              work: float | None = None) -> dict:
    """Combine paired timings (pair i = baseline_seconds[i], parallel_seconds[i]).

    Returns median_ratio (the speed-up: median of baseline_i / parallel_i), ratios,
    the timings, and spread (max ratio - min ratio, a noise gauge). With `work`
    (e.g. images processed per run, the same on both sides), also the median
    throughput of each side as baseline_rate and parallel_rate (work per second).
    """
    if len(baseline_seconds) != len(parallel_seconds) or not baseline_seconds:
        raise ValueError("need the same, non-zero number of baseline and parallel timings")
    if min(*baseline_seconds, *parallel_seconds) <= 0:
        raise ValueError("timings must be positive")
    ratios = [a / b for a, b in zip(baseline_seconds, parallel_seconds)]
    out = {"median_ratio": statistics.median(ratios), "ratios": ratios,
           "baseline_seconds": list(baseline_seconds), "parallel_seconds": list(parallel_seconds),
           "spread": max(ratios) - min(ratios)}
    if work is not None:
        out["baseline_rate"] = work / statistics.median(baseline_seconds)
        out["parallel_rate"] = work / statistics.median(parallel_seconds)
    return out


def _timed(run: Callable[[], float | None]) -> float:
    start = time.perf_counter()
    reported = run()
    elapsed = time.perf_counter() - start
    return float(reported) if isinstance(reported, (int, float)) and not isinstance(reported, bool) else elapsed


def paired_speedup(run_a: Callable[[], float | None], run_b: Callable[[], float | None], repeats: int = 3,
                   *, warmup: int = 1, work: float | None = None) -> dict:
    """Speed-up of run_b over run_a (a = baseline), from `repeats` alternating pairs after `warmup` pairs.

    Warm-up pairs (lazy initialisation, caches, first-call compilation) are run and dropped.
    Returns summarize()'s dict.
    """
    for _ in range(warmup):
        run_a()
        run_b()
    seconds: dict[str, list[float]] = {"a": [], "b": []}
    for pair in pair_order(repeats):
        for side in pair:
            seconds[side].append(_timed(run_a if side == "a" else run_b))
    return summarize(seconds["a"], seconds["b"], work=work)
