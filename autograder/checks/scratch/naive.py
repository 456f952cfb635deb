"""scratch.naive: allreduce_gradients(model) -> None: after backward, every parameter's .grad becomes the mean
of the ranks' gradients (one all-reduce per parameter).

Scenario: an MLP with uneven layers, a buffer and a layer the loss never uses (its .grad stays None),
the same secret initial weights on every rank, three SGD steps, each rank on its own secret batches.
After every backward the rank part calls allreduce_gradients(model) and records every .grad; the
harness computes the mean of the ranks' gradients in one process (reference.train_data_parallel)
and compares step by step, then the final weights. Tolerance: 1e-4 relative (float32 sums in another
order, see checks/scratch). A sum instead of a mean (N x), an unchanged local gradient, zeros, a
missing .grad, and a crash on the unused layer's None gradient are named.
"""
from __future__ import annotations

from .. import Check, Run
from ..replies import reads_rank_results
from . import _dp


@reads_rank_results
def _judge(run: Run) -> str:
    return _dp.judge(run, "naive")


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "NoneType" in text:   # the only None this function meets is the .grad of a parameter the loss did not use
        return ("Skip parameters whose .grad is None (the loss did not use them: this model has one) before "
                "all-reducing.")
    return None


CHECK = Check(id="scratch.naive", functions=("allreduce_gradients",), inputs=lambda t: _dp.inputs(t, "naive"),
              expected=_dp.expected, judge=_judge, explain=_explain, defaults={"steps": 3}, by_hand=True)
