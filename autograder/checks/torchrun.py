"""Checks for 02_torchrun: dist_env, global_mean, gather_all (torchrun_basics.py)."""
from __future__ import annotations

from ..verdict import CheckFailed, expect
from . import DistributedCheck, Run, environment, register

# ---------------------------------------------------------------- torchrun.env
# dist_env() must read RANK, LOCAL_RANK and WORLD_SIZE from the environment. Each rank
# calls it twice: under torchrun's real environment, and under a made-up one in which
# rank, local rank and world size all differ, so that reading LOCAL_RANK as the rank
# or a hard-coded world size cannot pass even when a 2-process job makes them coincide.


def _as_json(values) -> dict:
    if not isinstance(values, (tuple, list)):
        return {"kind": type(values).__name__, "values": None}
    return {"kind": "sequence", "values": [v if isinstance(v, (int, str, float)) else repr(v) for v in values],
            "types": [type(v).__name__ for v in values]}


def _env_scenario(ctx, learner):
    real = _as_json(learner.dist_env())
    made_up = {"RANK": str(5 + 2 * ctx.rank), "LOCAL_RANK": str(1 + ctx.rank), "WORLD_SIZE": "12",
               "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "2"}
    with environment(made_up):
        fake = _as_json(learner.dist_env())
    return {"real": real, "real_expected": [ctx.rank, ctx.local_rank, ctx.world_size],
            "fake": fake, "fake_expected": [int(made_up["RANK"]), int(made_up["LOCAL_RANK"]), 12]}


def _diagnose_env(got: list, expected: list, label: str) -> None:
    rank, local_rank, world = expected
    expect(got[:2] != [local_rank, rank] or rank == local_rank,
           f"{label}: returned (local_rank, rank, ...) instead of (rank, local_rank, world_size)",
           "Return the three values in the order (rank, local_rank, world_size).")
    expect(got[0] == rank,
           f"{label}: rank is {got[0]!r}, expected {rank}"
           + (" (that is LOCAL_RANK)" if got[0] == local_rank else ""),
           "RANK is the global rank across all nodes; LOCAL_RANK only numbers the processes on one "
           "machine (use it to pick the GPU)." if got[0] == local_rank else "Read the rank from os.environ['RANK'].")
    expect(got[1] == local_rank, f"{label}: local_rank is {got[1]!r}, expected {local_rank}",
           "Read the local rank from os.environ['LOCAL_RANK'].")
    expect(got[2] == world, f"{label}: world_size is {got[2]!r}, expected {world}",
           "Read the world size from os.environ['WORLD_SIZE'] instead of writing a number: the same code "
           "must run with any number of processes.")


def _judge_env(run: Run) -> str:
    for outcome in run.ranks:
        res = outcome.result
        for key, label in (("real", f"rank {outcome.rank} under torchrun"),
                           ("fake", f"rank {outcome.rank} with RANK/LOCAL_RANK/WORLD_SIZE set to other values")):
            got = res[key]
            expect(got["kind"] == "sequence" and len(got["values"]) == 3,
                   f"{label}: dist_env() returned a {got['kind']}, not a tuple of three values",
                   "Return a tuple: (rank, local_rank, world_size).")
            bad = [t for t in got["types"] if t != "int"]
            expect(not bad, f"{label}: dist_env() returned {got['types']}, not three ints",
                   "Environment variables are strings: convert them with int(...).")
            _diagnose_env(got["values"], res[f"{key}_expected"], label)
    return f"dist_env() read rank, local rank and world size correctly on all {run.world_size} ranks"


def _explain_env(error: dict) -> str | None:
    if "process group" in error["message"].lower() and "initialized" in error["message"]:
        return ("dist_env() must not need a process group: read RANK, LOCAL_RANK and WORLD_SIZE from "
                "os.environ, which torchrun sets before your code starts.")
    if error["type"] == "KeyError":
        return "Use the variable names torchrun sets: RANK, LOCAL_RANK, WORLD_SIZE."
    return None


register(DistributedCheck(id="torchrun.env", functions=("dist_env",), scenario=_env_scenario,
                          judge=_judge_env, init_group=False, explain=_explain_env))


# ---------------------------------------------------------------- shared inputs
# Every rank's input is a seeded function of its rank, so any rank can compute the
# expected result of a collective locally, without trusting communication.

def _rank_tensor(seed: int, rank: int, shape, dtype: str):
    import torch

    g = torch.Generator().manual_seed(1000 * seed + rank)
    return (torch.randn(*shape, generator=g) + 10 * rank).to(getattr(torch, dtype))


# ---------------------------------------------------------------- torchrun.mean

def _mean_scenario(ctx, learner):
    import torch

    shape, dtype = ctx.params["shape"], ctx.params["dtype"]
    t = _rank_tensor(ctx.seed, ctx.rank, shape, dtype)
    before = t.clone()
    out = learner.global_mean(t)
    every = torch.stack([_rank_tensor(ctx.seed, r, shape, dtype) for r in range(ctx.world_size)])
    mean, total = every.mean(0), every.sum(0)
    is_tensor = isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(shape)
    close = lambda a, b: bool(is_tensor and torch.allclose(out.double(), b.double(), rtol=1e-5, atol=1e-5))  # noqa
    return {"is_tensor": is_tensor, "type": type(out).__name__,
            "shape": list(out.shape) if isinstance(out, torch.Tensor) else None,
            "mean": close(out, mean), "sum": close(out, total), "local": close(out, before),
            "input_changed": not torch.equal(t, before), "all_reduce_calls": ctx.calls.get("all_reduce", 0)}


def _judge_mean(run: Run) -> str:
    ws = run.world_size
    for o in run.ranks:
        r, res = o.rank, o.result
        expect(res["is_tensor"], f"rank {r}: global_mean returned {res['type']} {res['shape'] or ''}, "
                                 f"not a tensor of the input's shape", "Return a new tensor shaped like t.")
        expect(res["all_reduce_calls"] > 0, f"rank {r}: global_mean never called dist.all_reduce",
               "Each rank only has its own tensor: combine them with dist.all_reduce (SUM), then divide.")
        if not res["mean"]:
            if res["sum"] and ws > 1:
                raise CheckFailed(f"rank {r}: got the sum over ranks, not the mean",
                                  "all_reduce with ReduceOp.SUM adds the ranks' tensors: divide by the world size.")
            if res["local"] and ws > 1:
                raise CheckFailed(f"rank {r}: got this rank's own tensor back, not the mean over ranks",
                                  "The all_reduce result is not used: reduce a copy and return that copy.")
            raise CheckFailed(f"rank {r}: result differs from the mean over all {ws} ranks",
                              "Sum a copy of t over ranks with dist.all_reduce, then divide by the world size.")
        expect(not res["input_changed"], f"rank {r}: global_mean changed its input tensor",
               "dist.all_reduce works in place: all-reduce a copy (t.clone()) so the caller's tensor is unchanged.")
    return f"global_mean() returned the mean over {ws} ranks with all_reduce, input unchanged"


register(DistributedCheck(id="torchrun.mean", functions=("global_mean",), scenario=_mean_scenario,
                          judge=_judge_mean, defaults={"shape": [4, 3], "dtype": "float32"}))


# ---------------------------------------------------------------- torchrun.gather

def _gather_scenario(ctx, learner):
    import torch

    shape, dtype = ctx.params["shape"], ctx.params["dtype"]
    t = _rank_tensor(ctx.seed, ctx.rank, shape, dtype)
    out = learner.gather_all(t.clone())
    every = [_rank_tensor(ctx.seed, r, shape, dtype) for r in range(ctx.world_size)]
    if not isinstance(out, (list, tuple)) or not all(isinstance(x, torch.Tensor) for x in out):
        return {"kind": type(out).__name__, "length": None}
    same = lambda a, b: a.shape == b.shape and bool(torch.allclose(a.double(), b.double()))  # noqa: E731
    # match[i] = which rank's tensor sits at position i (None if it matches no rank's)
    match = [next((r for r, e in enumerate(every) if same(x, e)), None) for x in out]
    return {"kind": "list", "length": len(out), "match": match,
            "all_gather_calls": ctx.calls.get("all_gather", 0) + ctx.calls.get("all_gather_into_tensor", 0)}


def _judge_gather(run: Run) -> str:
    ws = run.world_size
    for o in run.ranks:
        r, res = o.rank, o.result
        expect(res["kind"] == "list", f"rank {r}: gather_all returned {res['kind']}, not a list of tensors",
               "Return the list you passed to dist.all_gather.")
        expect(res["all_gather_calls"] > 0, f"rank {r}: gather_all never called dist.all_gather",
               "Use dist.all_gather(list_of_empty_tensors, t) to receive every rank's tensor.")
        match = res["match"]
        expect(res["length"] == ws, f"rank {r}: got {res['length']} tensors, expected one per rank ({ws})",
               "Pre-allocate world_size tensors shaped like t, one for each rank.")
        if match != list(range(ws)):
            if ws > 1 and len(set(match)) == 1:
                raise CheckFailed(f"rank {r}: every entry is the same tensor (rank {match[0]}'s)",
                                  "[torch.zeros_like(t)] * n is one tensor n times; allocate n separate "
                                  "tensors: [torch.zeros_like(t) for _ in range(n)].")
            if sorted(m for m in match if m is not None) == list(range(ws)):
                raise CheckFailed(f"rank {r}: tensors are in the wrong order: position i holds rank {match}",
                                  "all_gather fills the list in rank order: entry i is rank i's tensor; "
                                  "do not reorder or put this rank's tensor first.")
            raise CheckFailed(f"rank {r}: entries do not match the ranks' tensors (matched ranks: {match})",
                              "Allocate one empty tensor per rank, call dist.all_gather(tensors, t), return tensors.")
    return f"gather_all() returned all {ws} ranks' tensors in rank order"


register(DistributedCheck(id="torchrun.gather", functions=("gather_all",), scenario=_gather_scenario,
                          judge=_judge_gather, defaults={"shape": [3, 2], "dtype": "float32"}))
