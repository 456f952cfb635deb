"""torchrun.gather: gather_all(t) -> every rank's t, in rank order, with all_gather.

Each rank holds a secret tensor; the judge finds which rank's tensor sits at each
position of the returned list (or none), and names the mistake from that map.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import close, rank_tensors


def _inputs(trial) -> list:
    return [{"tensor": t} for t in rank_tensors(trial, trial.params["shape"], trial.params["dtype"])]


def _judge(run: Run) -> str:
    ws = run.world_size
    every = [x["tensor"] for x in run.inputs]
    for o in run.ranks:
        r, res = o.rank, o.result
        expect(res["kind"] == "list", f"rank {r}: gather_all returned {res['kind']}, not a list of tensors",
               "Return the list you passed to dist.all_gather.")
        got = res["tensors"]
        expect(len(got) == ws, f"rank {r}: got {len(got)} tensors, expected one per rank ({ws})",
               "Pre-allocate world_size tensors shaped like t, one for each rank." if o.calls.get("all_gather") else
               "Each rank only has its own tensor: use dist.all_gather(list_of_empty_tensors, t) to receive every "
               "rank's tensor.")
        match = [next((k for k, e in enumerate(every) if close(x, e)), None) for x in got]
        if match == list(range(ws)):
            continue
        if ws > 1 and len(set(match)) == 1:
            raise CheckFailed(f"rank {r}: every entry is the same tensor (rank {match[0]}'s)",
                              "[torch.zeros_like(t)] * n is one tensor n times; allocate n separate tensors: "
                              "[torch.zeros_like(t) for _ in range(n)]." if o.calls.get("all_gather") else
                              "Use dist.all_gather(list_of_empty_tensors, t) to receive every rank's tensor.")
        if sorted(m for m in match if m is not None) == list(range(ws)):
            raise CheckFailed(f"rank {r}: tensors are in the wrong order: position i holds rank {match}",
                              "all_gather fills the list in rank order: entry i is rank i's tensor; "
                              "do not reorder or put this rank's tensor first.")
        raise CheckFailed(f"rank {r}: entries do not match the ranks' tensors (matched ranks: {match})",
                          "Use dist.all_gather(list_of_empty_tensors, t) to receive every rank's tensor: allocate one "
                          "empty tensor per rank, call dist.all_gather(tensors, t), return tensors.")
    return f"gather_all() returned all {ws} ranks' secret tensors in rank order"


CHECK = Check(id="torchrun.gather", functions=("gather_all",), inputs=_inputs, judge=_judge,
              defaults={"shape": [3, 2], "dtype": "float32"})
