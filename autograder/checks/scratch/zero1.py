"""scratch.zero1: ShardedOptimizer(params, optimizer_cls, **kwargs), ZeRO-1: each rank builds optimizer_cls over
its own shard of the parameters only; step() steps the shard and broadcasts every parameter from its owner;
shard_of(param) names the owner; zero_grad() as any optimizer.

Scenarios (secret weights, the same on every rank; secret batches, each rank its own; three steps;
the rank part averages the gradients itself, so the optimizer receives identical gradients on
every rank): Adam on an MLP with uneven layers, and SGD with momentum on a single Linear layer
(two parameters: at 3 ranks one rank owns nothing and must still work). In float64: Adam divides
by sqrt(v), so an element whose gradient nearly cancels over the ranks moves by ~lr whichever sign
the summation order gives it; in float32 that failed the reference in 1 of 25 calls at 3 ranks
(every tensor off after three steps), in float64 the sums agree to ~1e-16.

What is checked, in this order:
- the partition, from shard_of on every rank: every parameter owned by exactly one rank (all ranks
  agree, an owner in 0..N-1), and the load (elements per rank) spread at most the largest parameter;
- the optimizer state each rank holds (ShardedOptimizer.state, as the notebook asks): the shards'
  states are disjoint, cover every parameter, and each sits on its owner, so each rank's state
  bytes are about 1/N of the plain optimizer's (at most total/N + the largest parameter's share);
- the weights after three steps on every rank equal plain Adam / SGD in one process over all the
  ranks' batches (reference.train_optimizer), 1e-4 relative (gradient sums in another order).
The state is what the rank's ShardedOptimizer reports holding: a learner who hid a full copy
elsewhere would not be seen (the bytes are counted, not measured from outside: at these sizes
the process's resident memory could not show them).
"""
from __future__ import annotations

from ...verdict import CheckFailed
from .. import Check, Run
from ..replies import reads_rank_results
from . import fmt_names, mismatched, mlp_spec, param_sizes, secret_batches, secret_state, wire


def _scenarios(trial) -> list[dict]:
    rng, ws, steps = trial.rng, trial.world_size, int(trial.params["steps"])
    sizes = [rng.randint(16, 24), rng.randint(60, 90), rng.randint(30, 50), rng.randint(5, 9), rng.randint(2, 4)]
    plans = [("Adam on an MLP with uneven layers", mlp_spec(sizes, float64=True),
              "adam", {"lr": round(rng.uniform(0.005, 0.02), 4), "betas": [0.9, 0.99]}),
             ("SGD with momentum on one Linear layer (two parameters)",
              mlp_spec([rng.randint(3, 6), rng.randint(1, 2)], float64=True), "sgd",
              {"lr": round(rng.uniform(0.05, 0.2), 3), "momentum": 0.9})]
    out = []
    for i, (title, spec, name, kwargs) in enumerate(plans):
        state = secret_state(trial, spec, 200 + i)
        rows = rng.randint(4, 6)
        batches = [secret_batches(trial, 2000 + 100 * i + r, steps, rows, spec["sizes"][0], spec["sizes"][-1],
                                  float64=True) for r in range(ws)]
        out.append({"title": title, "spec": spec, "state": state, "optimizer": name, "kwargs": kwargs,
                    "batches": batches})
    return out


def optimizer_inputs(trial) -> list:
    """Each rank's scenarios: the model (secret weights), the optimizer, and this rank's own batches."""
    described = _scenarios(trial)
    return [{"scenarios": [{"model": {**s["spec"], "state": s["state"]}, "optimizer": s["optimizer"],
                            "kwargs": s["kwargs"], "batches": s["batches"][r], "title": s["title"]}
                           for s in described]} for r in range(trial.world_size)]


def optimizer_expected(trial, inputs) -> list:
    """Per scenario: plain training in one process on the mean gradients, its state bytes, the sizes."""
    from . import reference

    out = []
    for i, first in enumerate(inputs[0]["scenarios"]):
        spec = {k: v for k, v in first["model"].items() if k != "state"}
        done = reference.train_optimizer(spec, first["model"]["state"], [x["scenarios"][i]["batches"] for x in inputs],
                                         first["optimizer"], first["kwargs"])
        out.append({"final": done["final"], "state_bytes": done["state_bytes"], "sizes": param_sizes(spec)})
    return out


def _bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def _partition(run: Run, i: int, where: str, sizes: list[tuple[str, int]]) -> dict[str, int]:
    ws = run.world_size
    claims = [o.result["scenarios"][i]["owners"] for o in run.ranks]
    owners = {}
    for name, _ in sizes:
        said = [c.get(name) for c in claims]
        bad = next((v for v in said if not isinstance(v, int) or not 0 <= v < ws), None)
        if bad is not None or any(not isinstance(v, int) for v in said):
            raise CheckFailed(f"{where}: shard_of({name}) returned {bad!r}, not a rank between 0 and {ws - 1}: the "
                              f"parameter is in no rank's shard",
                              "Give every parameter to exactly one rank (e.g. each parameter, largest first, to the "
                              "rank with the fewest elements so far) and return that rank from shard_of.")
        if len(set(said)) > 1:
            raise CheckFailed(f"{where}: the ranks disagree about who owns {name}: shard_of says "
                              + ", ".join(f"rank {r}: {v}" for r, v in enumerate(said)),
                              "Compute the partition from the parameters' sizes and order alone (no rank number, no "
                              "randomness), so that every rank computes the same one.")
        owners[name] = said[0]
    load = [sum(n for name, n in sizes if owners[name] == r) for r in range(ws)]
    largest = max(n for _, n in sizes)
    if max(load) - min(load) > largest:
        raise CheckFailed(f"{where}: the shards hold {load} elements: the spread {max(load) - min(load)} is more than "
                          f"the largest parameter ({largest} elements)",
                          "Balance by size, not by count: take the parameters largest first and give each to the "
                          "rank that holds the fewest elements so far.")
    return owners


def _states(run: Run, i: int, where: str, owners: dict, want_bytes: dict) -> list[int]:
    ws = run.world_size
    held = [{n for n, s in o.result["scenarios"][i]["state"].items() if s} for o in run.ranks]
    names = list(owners)
    if ws > 1 and all(h >= set(names) for h in held):
        raise CheckFailed(f"{where}: every rank holds optimizer state for every parameter: each rank stepped the whole "
                          f"model, as plain data parallelism does (ZeRO-1 keeps 1/{ws} of it per rank)",
                          "Build the inner optimizer over this rank's shard only (the parameters shard_of gives to "
                          "this rank), step only it, and broadcast each parameter from its owner.")
    for name in names:
        on = [r for r in range(ws) if name in held[r]]
        if len(on) > 1:
            raise CheckFailed(f"{where}: {name} has optimizer state on ranks {on}: the shards overlap",
                              "Each parameter belongs to exactly one shard: build rank r's inner optimizer over "
                              "exactly the parameters with shard_of(p) == r (check the boundaries of your split).")
        if not on:
            raise CheckFailed(f"{where}: no rank holds optimizer state for {name}: it is in no shard, so nobody "
                              f"steps it",
                              "The shards must cover every parameter (a split that drops the remainder of "
                              "n_params / world_size leaves the last ones out).")
        if on[0] != owners[name]:
            raise CheckFailed(f"{where}: {name}'s optimizer state is on rank {on[0]}, but shard_of says rank "
                              f"{owners[name]} owns it",
                              "shard_of(p) must name the rank whose inner optimizer steps p (and which broadcasts it).")
    per_rank = [sum(_bytes(run.ranks[r].result["scenarios"][i]["state"][n]) for n in held[r]) for r in range(ws)]
    total, largest = sum(want_bytes.values()), max(want_bytes.values())
    for r, b in enumerate(per_rank):
        if b > total / ws + largest:
            raise CheckFailed(f"{where}: rank {r} holds {b} bytes of optimizer state, more than 1/{ws} of the plain "
                              f"optimizer's {total} bytes plus one parameter's share",
                              "The inner optimizer must hold the state of this rank's shard only.")
    return per_rank


def _weights(run: Run, i: int, where: str, owners: dict, want: dict, sent_state: dict) -> None:
    for o in run.ranks:
        got = o.result["scenarios"][i]["final"]
        wrong = mismatched(got, want)
        if not wrong:
            continue
        never = [n for n in wrong if mismatched({n: got[n]}, {n: sent_state[n]}, 0.0, 0.0) == []]
        stale = [n for n in wrong if owners.get(n) != o.rank]
        if (never and all(owners.get(n) != o.rank for n in never)) or (stale and len(stale) == len(wrong)):
            raise CheckFailed(f"{where}: rank {o.rank}: the parameters other ranks own ({fmt_names(never or stale)}) "
                              f"{'never changed' if never else 'are not the updated ones'} on this rank",
                              "After stepping its shard, every rank must receive the parameters it does not own: "
                              "dist.broadcast(p, src=shard_of(p)) for every parameter, in the same order on every "
                              "rank.")
        if never:
            raise CheckFailed(f"{where}: rank {o.rank}: {fmt_names(never)} never changed during training",
                              "Every parameter must be stepped by its owner and then broadcast.")
        raise CheckFailed(f"{where}: rank {o.rank}: after three steps {fmt_names(wrong)} differ from the plain "
                          f"optimizer's in one process",
                          "Pass optimizer_cls and **kwargs unchanged to the inner optimizer, step it once per step(), "
                          "and keep zero_grad() for every parameter (the base class does it over param_groups).")


@reads_rank_results
def _judge(run: Run):
    ws, memory, lines = run.world_size, None, []
    for i, want in enumerate(run.expected):
        sent = run.inputs[0]["scenarios"][i]
        where = f"scenario {i + 1} ({sent['title']})"
        owners = _partition(run, i, where, want["sizes"])
        per_rank = _states(run, i, where, owners, want["state_bytes"])
        _weights(run, i, where, owners, want["final"], sent["model"]["state"])
        total = sum(want["state_bytes"].values())
        if i == 0:
            memory = {"ranks": list(range(ws)), "bytes": {"plain Adam (every rank)": [total] * ws,
                                                          "ShardedOptimizer": per_rank},
                      "unit": "KiB", "title": "Adam state per rank (exp_avg, exp_avg_sq, step)"}
            lines.append("Adam state per rank " + ", ".join(f"{b / 1024:.1f}" for b in per_rank)
                         + " KiB = " + ", ".join(f"{b / total:.2f}x" for b in per_rank)
                         + f" of plain Adam's {total / 1024:.1f} KiB")
    # The bytes are an account, not a judgement: the part's all-reduce of the gradients, then your broadcasts.
    _, figures = wire(run, sum(sum(n for _, n in want["sizes"]) * len(run.inputs[0]["scenarios"][i]["batches"])
                               for i, want in enumerate(run.expected)))
    return (f"ShardedOptimizer matched plain Adam and SGD with momentum on {ws} rank(s); the shards are disjoint, "
            f"cover every parameter and are balanced within one parameter; " + "; ".join(lines)
            + f"; with the gradients' all-reduce, {figures}", {"memory": memory})


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "empty parameter list" in text:
        return ("A rank may own no parameter (more ranks than parameters): create the inner optimizer only when "
                "this rank's shard is not empty, and let step() skip it.")
    if "shard_of" in text or error["type"] == "KeyError":
        return "shard_of(param) must answer for every parameter passed to ShardedOptimizer, on every rank."
    return None


CHECK = Check(id="scratch.zero1", functions=("ShardedOptimizer",), inputs=optimizer_inputs,
              expected=optimizer_expected, judge=_judge,
              explain=_explain, defaults={"steps": 3}, by_hand=True)
