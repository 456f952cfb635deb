"""03_concepts (concepts.py): training memory, pipeline bubble and ring all-reduce volume.

Numeric exercises: the learner's function runs in a child process (one plain process, no
torchrun, no torch) on a fixed table of cases (the visible part), cases drawn from the
call's secret (an answer table copied from the visible run fails), and invalid arguments
the notebook asks to reject with ValueError. The child returns the answers; the reference
values and what each typical mistake would give are computed here (reference.py), and the
first wrong answer is named by the mistake that explains the most answers.

Tolerance: relative 1e-6. The answers are exact formulas; the cases use buffers and
parameter counts that divide by the world size, so integer arithmetic (`//`) is exact too,
and 1e-6 only absorbs float rounding.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from ...verdict import CheckFailed

RTOL = 1e-6
WORLD_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 64, 128, 1000, 1024)


def close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=1e-12)


def fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return repr(x)
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):_}"
    return f"{float(x):.6g}"


def call_text(function: str, args: list, kwargs: dict) -> str:
    parts = [fmt(a) for a in args] + [f"{k}={fmt(v)}" for k, v in kwargs.items()]
    return f"{function}({', '.join(parts)})"


def inputs(function: str, calls: list, invalid: list) -> list:
    """The one process's inputs: the function's name, the valid calls and the invalid ones ((args, kwargs) each)."""
    return [{"function": function, "calls": [[list(a), dict(k)] for a, k in calls],
             "invalid": [[list(a), dict(k)] for a, k, _ in invalid]}]


def _value(answer: dict, call: str, signature_hint: str, explain: Callable[[str], str | None]) -> float:
    """A valid call's answer as a number, or CheckFailed naming the call."""
    if "raised" in answer:
        kind = answer["raised"]
        hint = explain(kind) or (signature_hint if kind == "TypeError" else
                                 "Replace the raise line with your code." if kind == "NotImplementedError" else
                                 "These arguments are valid: compute the value instead of raising.")
        raise CheckFailed(f"{call} raised {kind}: {answer.get('message', '')}", hint)
    if answer.get("type") == "NoneType":
        raise CheckFailed(f"{call} returned None", "The function computes a value but does not return it: "
                                                   "add a return statement.")
    if answer.get("type") != "number":
        raise CheckFailed(f"{call} returned {answer.get('repr', answer.get('value'))} ({answer.get('type')}), "
                          f"not a finite number", "Return a plain int or float.")
    return float(answer["value"])


def _diagnose(calls: list, expected: list[dict], gots: list[float | None], function: str,
              hints: dict[str, str], generic_hint: str) -> None:
    """Fail on the first wrong answer, naming the typical mistake that explains most answers."""
    wants = [e["want"] for e in expected]
    bad = next((i for i, (w, g) in enumerate(zip(wants, gots)) if g is not None and not close(g, w)), None)
    if bad is None:
        return
    message = f"{call_text(function, *calls[bad])} returned {fmt(gots[bad])}, expected {fmt(wants[bad])}"
    scored = []
    for order, name in enumerate(hints):
        wrong = expected[bad]["mistakes"].get(name)
        if wrong is None or close(wrong, wants[bad]) or not close(gots[bad], wrong):
            continue
        explained = sum(1 for i, g in enumerate(gots)
                        if g is not None and (p := expected[i]["mistakes"].get(name)) is not None and close(g, p))
        scored.append((-explained, order, name))
    if scored:
        name = min(scored)[2]
        raise CheckFailed(f"{message} ({name})", hints[name])
    raise CheckFailed(message, generic_hint)


def judge_answers(run, *, hints: dict[str, str], generic_hint: str, signature_hint: str, invalid_hint: str,
                  explain: Callable[[str], str | None] = lambda kind: None) -> None:
    """Every valid call's answer equals the reference (or the first wrong one is named); invalid calls raise ValueError."""
    sent = run.inputs[0]
    function, calls = sent["function"], sent["calls"]
    answers = run.ranks[0].result["answers"]
    gots: list[float | None] = []
    first_error = None
    for (args, kwargs), answer in zip(calls, answers):
        try:
            gots.append(_value(answer, call_text(function, args, kwargs), signature_hint, explain))
        except CheckFailed as failure:
            first_error = failure
            break   # later answers cannot change which case fails first
    # a wrong value before the raising case is the first thing to fix
    _diagnose(calls[:len(gots)], run.expected["cases"][:len(gots)], gots, function, hints, generic_hint)
    if first_error is not None:
        raise first_error
    for (args, kwargs), answer, why in zip(sent["invalid"], run.ranks[0].result["invalid"], run.expected["invalid"]):
        call = call_text(function, args, kwargs)
        if answer.get("raised") == "ValueError":
            continue
        if "raised" in answer:
            raise CheckFailed(f"{call} ({why}) raised {answer['raised']}, not ValueError",
                              f"Check the arguments first and raise ValueError with a clear message: {invalid_hint}")
        raise CheckFailed(f"{call} ({why}) returned {fmt(answer.get('value', answer.get('repr')))} instead of "
                          f"raising ValueError",
                          f"Invalid arguments must raise ValueError (the exercise asks for it): {invalid_hint}")
