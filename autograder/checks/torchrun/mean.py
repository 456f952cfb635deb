"""torchrun.mean: global_mean(t) -> the mean of t over all ranks, with all_reduce; t left unchanged.

Each rank holds a secret tensor of its own, so the mean is out of reach without
communication. The rank sends back the result and its input as it was after the call.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import close, rank_tensors


def _inputs(trial) -> list:
    return [{"tensor": t} for t in rank_tensors(trial, trial.params["shape"], trial.params["dtype"])]


def _expected(trial, inputs) -> dict:
    import torch

    every = torch.stack([x["tensor"] for x in inputs])
    return {"mean": every.double().mean(0), "sum": every.double().sum(0)}


def _judge(run: Run) -> str:
    ws = run.world_size
    for o, sent in zip(run.ranks, run.inputs):
        r, res, mine = o.rank, o.result, sent["tensor"]
        shape = list(res["result"].shape) if res["result"] is not None else ""
        expect(res["result"] is not None and tuple(res["result"].shape) == tuple(mine.shape),
               f"rank {r}: global_mean returned {res['type']} {shape}, not a tensor of the input's shape",
               "Return a new tensor shaped like t.")
        out = res["result"]
        if not close(out, run.expected["mean"]):
            if ws > 1 and close(out, run.expected["sum"]):
                raise CheckFailed(f"rank {r}: got the sum over ranks, not the mean",
                                  "all_reduce with ReduceOp.SUM adds the ranks' tensors: divide by the world size.")
            if ws > 1 and close(out, mine):
                raise CheckFailed(f"rank {r}: got this rank's own tensor back, not the mean over ranks",
                                  "The all_reduce result is not used: reduce a copy and return that copy."
                                  if o.calls.get("all_reduce") else
                                  "Each rank only has its own tensor: combine them with dist.all_reduce (SUM), "
                                  "then divide.")
            raise CheckFailed(f"rank {r}: result differs from the mean over all {ws} ranks",
                              "Each rank only has its own tensor: sum a copy of t over ranks with dist.all_reduce, "
                              "then divide by the world size." + ("" if o.calls.get("all_reduce") else
                                                                   " (global_mean never called dist.all_reduce.)"))
        expect(close(res["input_after"], mine), f"rank {r}: global_mean changed its input tensor",
               "dist.all_reduce works in place: all-reduce a copy (t.clone()) so the caller's tensor is unchanged.")
    return f"global_mean() returned the mean over {ws} ranks (each rank held only its own secret tensor), input unchanged"


CHECK = Check(id="torchrun.mean", functions=("global_mean",), inputs=_inputs, expected=_expected, judge=_judge,
              defaults={"shape": [4, 3], "dtype": "float32"})
