"""concepts.allreduce: ring_allreduce_bytes(n_bytes, world_size), the bytes each rank sends: 2 (N - 1)/N * n_bytes."""
from __future__ import annotations

from .. import Check
from . import WORLD_SIZES, inputs, judge_answers

CASES = [(100_000_000, 2), (100_000_000, 4), (100_000_000, 8), (3_000_000_000, 3), (96_000_000, 1),
         (0, 4), (4096, 1024), (1_000_000_000, 1000)]
INVALID = [((), {"n_bytes": 1000, "world_size": 0}, "world_size < 1"),
           ((), {"n_bytes": -8, "world_size": 2}, "negative n_bytes")]
_PHASES = ("a ring all-reduce is a reduce-scatter (N - 1 steps) followed by an all-gather (N - 1 steps), and "
           "in each step a rank sends one chunk of n_bytes/N: 2 (N - 1)/N * n_bytes.")
HINTS = {
    "one rank still sends": "With one rank there is nobody to send to: 0 bytes (the formula gives 0 for N = 1).",
    "only one phase counted": "(N - 1)/N * n_bytes is one phase only (the reduce-scatter, or the all-gather): "
                              + _PHASES,
    "the full buffer twice": "2 * n_bytes (the full buffer twice, or 2N chunks) is only the limit for many ranks: "
                             "each phase has N - 1 steps of one chunk of n_bytes/N, so " + _PHASES,
    "the full buffer at every step, or the total over all ranks": "2 (N - 1) * n_bytes sends the whole buffer at "
        "each step (or sums over all N ranks); each step sends one chunk of n_bytes/N and the answer is per rank: "
        + _PHASES,
    "the full buffer to every other rank": "(N - 1) * n_bytes is a naive exchange of whole buffers; the ring sends "
                                           "chunks: " + _PHASES,
    "integer division": "(N - 1) // N is 0 for every N: multiply first or use / .",
    **{f"not in bytes (in {unit})": "Return bytes, in the unit of n_bytes." for unit in ("bits", "MB", "GB")},
}


def _inputs(trial) -> list:
    rng = trial.rng
    cases = list(CASES)
    for _ in range(int(trial.params["cases"])):
        ws = rng.choice(WORLD_SIZES)
        cases.append((ws * rng.randint(1, 10**9), ws))
    return inputs("ring_allreduce_bytes", [((), dict(n_bytes=n, world_size=ws)) for n, ws in cases], INVALID)


def _expected(trial, sent) -> dict:
    from . import reference

    return {"cases": reference.predictions(reference.allreduce, reference.ALLREDUCE_MISTAKES, sent[0]["calls"]),
            "invalid": [why for _, _, why in INVALID]}


def _explain(kind: str) -> str | None:
    if kind == "ZeroDivisionError":
        return "With one rank there is nobody to send to: return 0 bytes (avoid dividing by N - 1)."
    return None


def _judge(run) -> str:
    judge_answers(run, hints=HINTS, generic_hint="Count what one rank sends: " + _PHASES,
                  signature_hint="Keep the signature: ring_allreduce_bytes(n_bytes, world_size); the check passes "
                                 "them by name.",
                  invalid_hint="world_size >= 1 and n_bytes >= 0.", explain=_explain)
    calls = run.inputs[0]["calls"]
    return (f"ring_allreduce_bytes() matched 2 (N - 1)/N * n_bytes on {len(calls)} cases (1 to "
            f"{max(k['world_size'] for _, k in calls)} ranks) and rejected {len(INVALID)} invalid calls")


CHECK = Check(id="concepts.allreduce", functions=("ring_allreduce_bytes",), inputs=_inputs, expected=_expected,
              judge=_judge, part="concepts.calls", group="none", local=True, defaults={"seed": 0, "cases": 16})
