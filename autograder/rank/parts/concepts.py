"""Rank part of 03_concepts (concepts.py): call one of the learner's functions on the cases the harness sent."""
from __future__ import annotations

import math
import numbers


def _answer(fn, args, kwargs) -> dict:
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # the learner's code may raise anything: it is reported per call
        return {"raised": type(exc).__name__, "message": str(exc)[:200]}
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        return {"value": value if math.isfinite(value) else repr(value), "type": "number" if math.isfinite(value)
                else "not finite"}
    return {"type": type(value).__name__, "repr": repr(value)[:200]}


def calls(ctx, learner, inputs):
    """{"answers": [...], "invalid": [...]}: one answer (value or exception) per call, in order."""
    fn = getattr(learner, inputs["function"])
    return {"answers": [_answer(fn, a, k) for a, k in inputs["calls"]],
            "invalid": [_answer(fn, a, k) for a, k in inputs["invalid"]]}
