"""ddp.metrics: reduce_metrics(correct, total, loss_sum) -> (accuracy, mean loss) over all ranks: every
count summed over the ranks, then divided by the global number of samples.

Scenario: each rank receives counts of its own, drawn from the secret, with different numbers of
samples and different accuracies and losses per rank, so an average of per-rank averages is
wrong too, and every usual mistake gives a different pair. The right pair and the pair each
mistake would give are computed here (checks/ddp/reference.py); a wrong answer is named by the
mistake it equals. No rank can produce the right pair from its own counts alone.

Tolerance: 1e-6 relative. The counts are small integers and a loss sum with 6 decimals; summing
them in float64 (the notebook) or float32 stays well inside it.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import reads_rank_results

RTOL = 1e-6

HINTS = {
    "local": ("this rank's own metrics, not reduced over ranks",
              "Each rank only counted its own samples: dist.all_reduce the sums (correct, total, loss_sum) "
              "with ReduceOp.SUM before dividing."),
    "summed": ("the mean loss is the summed loss, not averaged",
               "After summing loss_sum over ranks, divide it by the summed total (the global sample count)."),
    "summed_means": ("the per-rank mean losses were summed, not averaged",
                     "Sum loss_sum and total over ranks, then divide: summing the ranks' mean losses counts "
                     "every rank's mean once, whatever its size."),
    "mean_of_means": ("an average of per-rank averages",
                      "Ranks hold different numbers of samples: sum correct, total and loss_sum over ranks "
                      "(all_reduce SUM), then divide by the global total; ReduceOp.AVG of the ranks' means "
                      "is wrong here."),
    "loss_by_local_count": ("the summed loss divided by this rank's count",
                            "Reduce total as well, and divide the global loss sum by the global total."),
}


def _inputs(trial) -> list:
    rng = trial.rng
    inputs = []
    for r in range(trial.world_size):
        total = 5 + 9 * r + rng.randrange(10)                   # a different number of samples on every rank
        correct = int(total * rng.uniform(0.2, 0.8))            # and a different accuracy
        loss_sum = round(total * (0.3 + 0.4 * r + rng.random()), 6)
        inputs.append({"counts": [correct, total, loss_sum]})
    return inputs


def _expected(trial, inputs) -> list[dict]:
    from . import reference

    counts = [tuple(x["counts"]) for x in inputs]
    return [reference.metrics(counts, r) for r in range(trial.world_size)]


def _close(a, b) -> bool:
    return all(math.isclose(x, y, rel_tol=RTOL, abs_tol=RTOL) for x, y in zip(a, b))


@reads_rank_results
def _judge(run: Run) -> str:
    ws = run.world_size
    for o, candidates in zip(run.ranks, run.expected):
        r, res = o.rank, o.result
        expect(res["kind"] == "pair", f"rank {r}: reduce_metrics returned {res['kind']}, not (accuracy, mean_loss)",
               "Return a tuple of two numbers: (accuracy, mean_loss).")
        got, right = res["values"], candidates["right"]
        if _close(got, right):
            continue
        wrong = {k: v for k, v in candidates.items() if k != "right"}
        # A whole wrong pair first (e.g. both local), then a right accuracy with a wrong loss.
        named = [k for k, pair in wrong.items() if _close(got, pair)]
        named += [k for k, pair in wrong.items() if _close(got[:1], right[:1]) and _close(got[1:], pair[1:])]
        expected = f"expected {right[0]:.4f}, {right[1]:.4f} over all {ws} ranks"
        if named:
            what, hint = HINTS[named[0]]
            raise CheckFailed(f"rank {r}: got accuracy {got[0]:.4f}, mean loss {got[1]:.4f}: {what} ({expected})",
                              hint)
        raise CheckFailed(f"rank {r}: got accuracy {got[0]:.4f}, mean loss {got[1]:.4f}; {expected}",
                          "accuracy = sum of correct / sum of total, mean loss = sum of loss_sum / sum of total, "
                          "each sum taken over all ranks with dist.all_reduce.")
    acc, loss = run.ranks[0].result["values"]
    return (f"reduce_metrics() gave the global accuracy {acc:.4f} and mean loss {loss:.4f} on all {ws} ranks "
            f"(secret counts, unequal samples per rank)")


CHECK = Check(id="ddp.metrics", functions=("reduce_metrics",), inputs=_inputs, expected=_expected, judge=_judge)
