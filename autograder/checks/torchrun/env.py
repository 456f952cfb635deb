"""torchrun.env: dist_env() -> (rank, local_rank, world_size), read from the environment torchrun sets.

Each rank calls it twice: under torchrun's real environment, and under a made-up one (drawn
from the secret) in which rank, local rank and world size all differ, so that reading
LOCAL_RANK as the rank or a hard-coded world size cannot pass even where a 2-process job
makes them coincide. The harness knows the true values: rank r runs on node r // nproc.
"""
from __future__ import annotations

from ...verdict import expect
from .. import Check, Run


def _inputs(trial) -> list:
    rng = trial.rng
    world = rng.randint(12, 64)
    inputs = []
    for _ in range(trial.world_size):
        rank, local = rng.randrange(8, world), rng.randrange(4)   # rank, local rank and world size all differ
        inputs.append({"environment": {"RANK": str(rank), "LOCAL_RANK": str(local), "WORLD_SIZE": str(world),
                                       "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": str(rank // 4)}})
    return inputs


def _expected(trial, inputs) -> list:
    per_node = trial.world_size // trial.nnodes
    return [{"real": [r, r % per_node, trial.world_size],
             "made_up": [int(x["environment"][k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")]}
            for r, x in enumerate(inputs)]


def _diagnose(got: list, expected: list, label: str) -> None:
    rank, local_rank, world = expected
    expect(got[:2] != [local_rank, rank] or rank == local_rank,
           f"{label}: returned (local_rank, rank, ...) instead of (rank, local_rank, world_size)",
           "Return the three values in the order (rank, local_rank, world_size).")
    expect(got[0] == rank,
           f"{label}: rank is {got[0]!r}, expected {rank}" + (" (that is LOCAL_RANK)" if got[0] == local_rank else ""),
           "RANK is the global rank across all nodes; LOCAL_RANK only numbers the processes on one "
           "machine (use it to pick the GPU)." if got[0] == local_rank else "Read the rank from os.environ['RANK'].")
    expect(got[1] == local_rank, f"{label}: local_rank is {got[1]!r}, expected {local_rank}",
           "Read the local rank from os.environ['LOCAL_RANK'].")
    expect(got[2] == world, f"{label}: world_size is {got[2]!r}, expected {world}",
           "Read the world size from os.environ['WORLD_SIZE'] instead of writing a number: the same code "
           "must run with any number of processes.")


def _judge(run: Run) -> str:
    for outcome, want in zip(run.ranks, run.expected):
        for key, label in (("real", f"rank {outcome.rank} under torchrun"),
                           ("made_up", f"rank {outcome.rank} with RANK/LOCAL_RANK/WORLD_SIZE set to other values")):
            got = outcome.result[key]
            expect(got["kind"] == "sequence" and len(got["values"]) == 3,
                   f"{label}: dist_env() returned a {got['kind']}, not a tuple of three values",
                   "Return a tuple: (rank, local_rank, world_size).")
            bad = [t for t in got["types"] if t != "int"]
            expect(not bad, f"{label}: dist_env() returned {got['types']}, not three ints",
                   "Environment variables are strings: convert them with int(...).")
            _diagnose(list(got["values"]), want[key], label)
    return f"dist_env() read rank, local rank and world size correctly on all {run.world_size} ranks"


def _explain(error: dict) -> str | None:
    if "process group" in error["message"].lower() and "initialized" in error["message"]:
        return ("dist_env() must not need a process group: read RANK, LOCAL_RANK and WORLD_SIZE from "
                "os.environ, which torchrun sets before your code starts.")
    if error["type"] == "KeyError":
        return "Use the variable names torchrun sets: RANK, LOCAL_RANK, WORLD_SIZE."
    return None


CHECK = Check(id="torchrun.env", functions=("dist_env",), inputs=_inputs, expected=_expected, judge=_judge,
              group="none", explain=_explain)
