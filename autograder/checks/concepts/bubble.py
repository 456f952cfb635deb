"""concepts.bubble: bubble_fraction(n_stages, n_microbatches) for a GPipe / 1F1B schedule: (p - 1)/(m + p - 1)."""
from __future__ import annotations

from .. import Check
from . import inputs, judge_answers

CASES = [(1, 1), (1, 8), (2, 1), (2, 4), (4, 4), (4, 8), (4, 32), (8, 1), (8, 64), (3, 10)]
INVALID = [((), {"n_stages": 0, "n_microbatches": 4}, "n_stages < 1"),
           ((), {"n_stages": 4, "n_microbatches": 0}, "n_microbatches < 1"),
           ((), {"n_stages": -2, "n_microbatches": 8}, "n_stages < 1")]
HINTS = {
    "(p - 1)/m: idle time relative to busy time": "(p - 1)/m compares the idle time with the busy time (the ratio "
        "the Megatron-LM paper uses); the bubble FRACTION is idle / (busy + idle): a step lasts m + p - 1 slots, of "
        "which p - 1 are idle, so (p - 1)/(m + p - 1).",
    "arguments swapped": "The signature is bubble_fraction(n_stages, n_microbatches): the p - 1 idle slots come from "
                         "the stages, not the microbatches.",
    "busy fraction instead of idle fraction": "m/(m + p - 1) is the fraction of the step a stage is busy (the "
                                              "efficiency); the bubble is the rest.",
    "a percentage, not a fraction": "Return a fraction between 0 and 1, not a percentage.",
    "integer division": "// is integer (floor) division and gives 0 here: use / for a fraction.",
    "off by one in the step length": "A step lasts m + p - 1 slots: the last microbatch enters the first stage at "
        "slot m and needs p - 1 more slots to leave the last stage. The bubble is (p - 1)/(m + p - 1).",
    "p/(m + p)": "Each stage idles p - 1 slots (not p) in a step of m + p - 1 slots: (p - 1)/(m + p - 1).",
}


def _inputs(trial) -> list:
    rng = trial.rng
    cases = CASES + [(rng.randint(1, 64), rng.randint(1, 512)) for _ in range(int(trial.params["cases"]))]
    return inputs("bubble_fraction", [((), dict(n_stages=p, n_microbatches=m)) for p, m in cases], INVALID)


def _expected(trial, sent) -> dict:
    from . import reference

    return {"cases": reference.predictions(reference.bubble, reference.BUBBLE_MISTAKES, sent[0]["calls"]),
            "invalid": [why for _, _, why in INVALID]}


def _judge(run) -> str:
    judge_answers(run, hints=HINTS,
                  generic_hint="With p stages and m microbatches a GPipe step lasts m + p - 1 slots per stage and "
                               "p - 1 of them are idle: (p - 1)/(m + p - 1).",
                  signature_hint="Keep the signature: bubble_fraction(n_stages, n_microbatches); the check passes "
                                 "them by name.",
                  invalid_hint="a pipeline needs at least one stage and one microbatch.")
    return (f"bubble_fraction() matched (p - 1)/(m + p - 1) on {len(run.inputs[0]['calls'])} cases and rejected "
            f"{len(INVALID)} invalid calls")


CHECK = Check(id="concepts.bubble", functions=("bubble_fraction",), inputs=_inputs, expected=_expected, judge=_judge,
              part="concepts.calls", group="none", local=True, defaults={"seed": 0, "cases": 16})
