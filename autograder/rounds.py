"""Timed rounds and the speed decisions every measured check uses (measured.py gives them the jobs).

A measured check compares sides: runs of the learner's code and of the course's reference, each
timed from outside. `timed_rounds` runs every side once per round, in an order rotated each
round (ABC, CAB, BCA, ...), so that a drift in the machine's speed hits every side alike; after
each round the check judges what its runs returned and `decide` turns the seconds so far into a
figure. A figure below its line whose best round reached it is a close case: more rounds, up to
`max_rounds` (`more_rounds`): three rounds decide clear cases, seven the close ones.

Two decisions, both calibrated by the reference in the same rounds:

speed (ddp.train, pipeline.train; `speed_figure`, `calibrated`), from three sides:
    baseline (the reference, serial), reference (the reference, parallel), learner (parallel)
    reference speed-up  = median over rounds of t(baseline) / t(reference)
    learner speed-up    = median over rounds of t(baseline) / t(learner)
    pass line           = max(floor, reference_share x reference speed-up)
  INCONCLUSIVE (never a fail) when even the reference stays under the floor (re-run on a quieter
  machine), or when the learner's parallel runs kept `pace_share` of the reference's:

    pace = median over rounds of t(reference) / t(learner)

  compares two samples of one distribution when the learner's code is right, round by round: a
  learner below the line who kept pace is undecided (the baseline drifted), not failed.

overlap (scratch.bucketed; `overlap_figure`): the reference's buckets with and without overlap
  bracket what overlap buys on this machine now (see overlap_figure).

In the student pack there is no reference: the baseline is the learner's own serial run and the
pass line is the floor (`self_baseline`: a self-check, not a grade).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from .verdict import CheckFailed, Inconclusive

BUSY_HINT = ("The machine is too busy to measure a speed-up now (other programs hold the cores): close them or "
             "wait, and run the check again.")


@dataclass(frozen=True)
class SpeedThresholds:
    """course.yaml thresholds of a speed check judged with `calibrated` (ddp.train, pipeline.train)."""
    floor_efficiency: float   # the floor: this share of the ideal speed-up
    reference_share: float    # the line: at least this share of the reference's own speed-up in the same run
    pace_share: float         # below the line yet this share of the reference's pace: inconclusive, not a fail


@dataclass(frozen=True)
class OverlapThresholds:
    """course.yaml thresholds of an overlap check judged with `overlap_figure` (scratch.bucketed)."""
    min_gain: float                      # the reference's gain from overlap must reach this, or no verdict
    overlap_share: float                 # pass line: no overlap + this share of the reference's gain
    loopback_mbit: float | None = None   # the shaped link (gloo); NCCL does not use the loopback


# ------------------------------------------------------------------ the rounds

def rotations(repeats: int, sides: int = 3) -> list[list[int]]:
    """Round i runs the sides in order rotated by i: [0,1,2], [2,0,1], [1,2,0], ..."""
    base = list(range(sides))
    return [base[-(i % sides):] + base[:-(i % sides)] if i % sides else base[:] for i in range(repeats)]


def more_rounds(figure: dict | None, rounds_done: int, max_rounds: int) -> bool:
    """Whether a speed measurement should go on: not passed yet, one of its rounds did reach the line (a close
    case, not a clear miss), and fewer than `max_rounds` rounds so far."""
    return (figure is not None and rounds_done < max_rounds and figure["decision"] != "pass"
            and max(figure["ratios"]) >= figure["threshold"])


def timed_rounds(sides: Sequence[str], run: Callable[[str, int], float], *, rounds: int,
                 decide: Callable[[dict[str, list[float]]], dict] | None = None, max_rounds: int = 0,
                 after_round: Callable[[int, dict | None], None] | None = None) -> tuple[dict[str, list[float]],
                                                                                          dict | None]:
    """{side: seconds per round} and the last figure: `rounds` rounds (more while `more_rounds` says the case is
    close), each calling run(side, round) -> seconds for every side in the round's rotated order, then
    decide(seconds so far) -> figure and after_round(round, figure) (the check judges the round's results there)."""
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    figure, i = None, 0
    while i < rounds or more_rounds(figure, i, max_rounds):
        for k in rotations(i + 1, len(sides))[i]:
            seconds[sides[k]].append(run(sides[k], i))
        figure = decide(seconds) if decide is not None else None
        if after_round is not None:
            after_round(i, figure)
        i += 1
    return seconds, figure


# ------------------------------------------------------------------ the speed decision

def calibrated(baseline: list[float], reference: list[float], learner: list[float], *, ideal: float,
               floor_efficiency: float, reference_share: float, pace_share: float | None = None) -> dict:
    """The speed-up figures and the decision: 'pass', 'fail' or 'inconclusive' (see the module docstring).

    `why` says what made a decision other than pass: 'reference under the floor', 'kept pace' or 'slower'."""
    ref = [b / r for b, r in zip(baseline, reference)]
    got = [b / x for b, x in zip(baseline, learner)]
    ref_median, got_median = statistics.median(ref), statistics.median(got)
    pace = statistics.median([r / x for r, x in zip(reference, learner)])
    floor = round(floor_efficiency * ideal, 2)
    line = round(max(floor, reference_share * ref_median), 2)
    if got_median >= line:
        decision, why = "pass", ""
    elif ref_median < floor:
        decision, why = "inconclusive", "reference under the floor"
    elif pace_share is not None and pace >= pace_share:
        decision, why = "inconclusive", "kept pace"
    else:
        decision, why = "fail", "slower"
    return {"measured": round(got_median, 2), "reference": round(ref_median, 2), "ideal": ideal,
            "threshold": line, "floor": floor, "ratios": [round(x, 2) for x in got],
            "reference_ratios": [round(x, 2) for x in ref], "pace": round(pace, 2), "decision": decision,
            "why": why}


def self_baseline(baseline: list[float], learner: list[float], *, ideal: float, floor_efficiency: float) -> dict:
    """Student pack: the learner's own baseline, the floor as the line (no reference to calibrate with)."""
    got = [b / x for b, x in zip(baseline, learner)]
    median = statistics.median(got)
    floor = round(floor_efficiency * ideal, 2)
    return {"measured": round(median, 2), "ideal": ideal, "threshold": floor, "floor": floor,
            "ratios": [round(x, 2) for x in got], "decision": "pass" if median >= floor else "fail",
            "self_baseline": True}


def speed_figure(seconds: dict[str, list[float]], *, ideal: float, thresholds: SpeedThresholds) -> dict:
    """The figure of rounds of the sides 'baseline', 'learner' and, when graded, 'reference' (calibrated);
    without a reference (the student pack) the baseline is the learner's own (self_baseline)."""
    if "reference" in seconds:
        return calibrated(seconds["baseline"], seconds["reference"], seconds["learner"], ideal=ideal,
                          floor_efficiency=thresholds.floor_efficiency, reference_share=thresholds.reference_share,
                          pace_share=thresholds.pace_share)
    return self_baseline(seconds["baseline"], seconds["learner"], ideal=ideal,
                         floor_efficiency=thresholds.floor_efficiency)


def require_speed(figure: dict, figures: str, *, correct: str, runs: str, fail_message: str, fail_hint: str,
                  details: dict) -> None:
    """Inconclusive or CheckFailed unless the figure passed: the words every speed check uses. `figures` is the
    figure in words, `correct` what passed before the speed, `runs` the learner's timed runs ("2-rank runs")."""
    if figure["decision"] == "inconclusive":
        why = (f"even the reference reached only {figure['reference']:.2f}x (floor {figure['floor']:.2f}x)"
               if figure["why"] == "reference under the floor" else
               f"yet your {runs} kept {figure['pace']:.0%} of the reference's pace in the same rounds")
        raise Inconclusive(f"{correct}, but the speed-up is undecided: {figures}; {why}", BUSY_HINT, details)
    if figure["decision"] == "fail":
        raise CheckFailed(f"{fail_message}: {figures}", fail_hint, details)


# ------------------------------------------------------------------ the overlap decision

def overlap_figure(times: dict[str, list[float]], *, min_gain: float, share: float, agreement: float = 0.75) -> dict:
    """The overlap decision from per-round step times {"naive", "no overlap", "reference"?, "yours"}.

    Per round, each side's speed-up over that round's naive steps; medians over the rounds. The
    reference's buckets with and without overlap bracket what overlap buys on this machine right now:
    pass line = no overlap + share x (reference - no overlap). Inconclusive (neither a pass nor a fail)
    when that gap is under min_gain, or when the reference beat its no-overlap twin in fewer than
    `agreement` of the rounds (a machine too busy to show overlap reliably), or when the learner's median
    missed the line but the reference was faster than the learner in fewer than `agreement` of the rounds
    (right code is a second sample of the reference: its median falls under the line by chance, its rounds
    do not lose to the reference's round after round). Without a reference (student pack) the no-overlap
    twin is the learner's own and the line is that twin + min_gain.
    """
    ratios = {side: [n / x for n, x in zip(times["naive"], v)] for side, v in times.items() if side != "naive"}
    med = {side: statistics.median(v) for side, v in ratios.items()}
    low, wins, ahead = med["no overlap"], None, None

    def share_of_wins(a, b):
        return sum(x > y for x, y in zip(ratios[a], ratios[b])) / len(ratios[a])

    if "reference" in med:
        gap = med["reference"] - low
        line = low + share * gap
        wins, ahead = share_of_wins("reference", "no overlap"), share_of_wins("reference", "yours")
        if gap < min_gain or wins < agreement:    # the noise would decide: neither a pass nor a fail
            verdict, why = "inconclusive", "no clear gain"
        elif med["yours"] >= line:
            verdict, why = "pass", ""
        elif ahead < agreement:
            verdict, why = "inconclusive", "kept pace"
        else:
            verdict, why = "fail", "slower"
    else:
        gap, line = None, low + min_gain
        verdict, why = ("pass", "") if med["yours"] >= line else ("fail", "slower")
    return {"speedups": {k: round(v, 3) for k, v in med.items()}, "threshold": round(line, 3),
            "gap": None if gap is None else round(gap, 3), "reference_wins": wins, "reference_ahead": ahead,
            "decision": verdict, "why": why,
            "ratios": {side: [round(x, 3) for x in v] for side, v in ratios.items()}}
