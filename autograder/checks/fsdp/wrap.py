"""fsdp.wrap: shard_model(model, mesh=None, **fsdp_kwargs) applies fully_shard to each of model.blocks(), then to
the model itself, on one 1-D mesh over all ranks (the one given, else one it builds), passing fsdp_kwargs to every
call, and returns the model.

Scenario: a small EuroSATNet without BatchNorm (per-rank statistics would make one process on the
whole batch a different computation), its weights drawn from the call's secret and sent to every
rank. Each rank calls shard_model and sends back its local shards (DTensor.to_local()); then it
trains a few SGD steps (momentum 0.9), each rank on its own secret slice of each global batch, and
sends back its shards again. Here the evidence is checked: right after sharding, rank r must hold
exactly rows torch.chunk(parameter, N)[r] of every parameter (so the ranks' shards are disjoint and
cover it, 1/N each); after the steps, exactly those rows of the parameters one process gets by
training on the whole batches (reference.py). No rank can produce the trained rows alone: each
saw only its own slice of the data.

What the rank observes of the model's structure (which modules are FSDP units, the mesh of the
parameters, whether blocks kept their gathered parameters between forward and backward with
reshard_after_forward=False) names the mistake: a single root unit or blocks without a root
train correctly but lose FSDP's memory schedule, and kwargs that reach only the root are wrong,
yet none of them shows in values. These observations can fail a call, never pass one.

Tolerance: shards right after sharding are copies (exact); after training, ATOL + RTOL (see
checks/fsdp/__init__.py: reduce-scatter and one process sum in different orders).
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import ATOL, TWICE_HINT, chunk_of, excess, explain, field, rank_batches, random_state, reply, strays, tensors

MOMENTUM = 0.9
WRAP_HINT = "Call fully_shard(block, mesh=mesh) for each block in model.blocks(), then fully_shard(model, mesh=mesh)."


def _spec(p: dict) -> dict:
    return {"kind": "eurosat", "width": p["width"], "blocks": p["blocks"], "norm": False}


def _inputs(trial) -> list:
    p, ws = trial.params, trial.world_size
    spec = _spec(p)
    state = random_state(trial.generator(0), spec)
    batches = rank_batches(trial.generator(1), ws, p["steps"], p["batch_per_rank"])
    kwargs = {} if p["reshard_after_forward"] is None else {"reshard_after_forward": p["reshard_after_forward"]}
    mesh_name = f"given_{trial.rng.getrandbits(32):08x}"
    return [{"model": {**spec, "state": state}, "kwargs": kwargs, "mesh_name": mesh_name, "batches": batches[r],
             "lr": p["lr"], "momentum": MOMENTUM} for r in range(ws)]


def _expected(trial, inputs) -> dict:
    from ...rank.toolkit import build_model
    from . import reference

    spec, state = {k: v for k, v in inputs[0]["model"].items() if k != "state"}, inputs[0]["model"]["state"]
    names = [n for n, _ in build_model(spec).named_parameters()]
    trained = reference.train_whole_batch(spec, state, [x["batches"] for x in inputs], lr=inputs[0]["lr"],
                                          momentum=MOMENTUM)
    return {"initial": {n: state[n] for n in names}, "trained": {n: trained[n] for n in names}}


def _judge_structure(o, ws: int) -> None:
    """What this rank saw of the units, in the order a learner fixes them (observations: failures and hints)."""
    r, res = o.rank, reply(o)
    if "applied_twice" in res:
        raise CheckFailed(f"rank {r}: shard_model applied fully_shard twice to {res['applied_twice']} "
                          "(fully_shard refuses a module it has already sharded)", TWICE_HINT)
    returned = field(o, "returned", str)
    expect(returned != "ddp", f"rank {r}: shard_model returned a DistributedDataParallel model, not FSDP",
           "DDP keeps a full replica of every parameter on every rank. Shard instead: " + WRAP_HINT)
    expect(returned in ("same", "module"), f"rank {r}: shard_model returned {returned}, not the model",
           "fully_shard changes the model in place: shard_model must give back the model it received.")
    units = field(o, "units", dict)
    root, blocks = bool(units.get("root")), units.get("blocks")
    if not isinstance(blocks, dict):
        raise CheckFailed(f"rank {r} sent back a malformed result (units)", "")
    unwrapped = [b for b, ok in blocks.items() if not ok]
    if not root and not any(blocks.values()):
        raise CheckFailed(f"rank {r}: no FSDP unit at all: neither the blocks nor the model were passed to "
                          "fully_shard", WRAP_HINT)
    if root and len(unwrapped) == len(blocks):
        raise CheckFailed(f"rank {r}: only the root is an FSDP unit (one unit for the whole model)",
                          "With a single unit, forward all-gathers every parameter at once and keeps them until "
                          "backward: the peak is the full model. fully_shard each block of model.blocks() first, "
                          "then the root.")
    expect(root, f"rank {r}: the blocks are FSDP units but the root (the model itself) is not",
           "After the blocks, call fully_shard(model, mesh=mesh) too: the root unit starts the first all-gather, "
           "owns any parameters outside the blocks and waits for the last reduce-scatter at the end of backward.")
    expect(not unwrapped, f"rank {r}: blocks {', '.join(unwrapped)} are not FSDP units",
           "Loop over every entry of model.blocks() (the conv blocks and the head).")


def _judge_shards(o, initial: dict, ws: int) -> None:
    """Evidence: right after sharding, rank r holds exactly its torch.chunk rows of every parameter."""
    import torch

    r = o.rank
    shards = tensors(o, "shards", initial)
    placements = field(o, "placements", dict)
    whole = [n for n, full in initial.items() if ws > 1 and full.shape[0] > 1 and shards[n].shape == full.shape]
    expect(not whole, f"rank {r}: holds the whole of {', '.join(whole[:3])}: not sharded",
           "Every parameter must belong to a unit: fully_shard each block, then the root.")
    for name, full in initial.items():
        got, want = shards[name], chunk_of(full, r, ws)
        if tuple(got.shape) != tuple(want.shape):
            where = placements.get(name) if isinstance(placements.get(name), dict) else {}
            raise CheckFailed(f"rank {r}: holds {got.numel()} of {name}'s {full.numel()} values "
                              f"(placed {where.get('placements')} on a mesh of {where.get('mesh_size')} ranks), "
                              f"expected its 1/{ws} slice ({want.numel()}: rows of Shard(dim=0) over all {ws})",
                              "Build a 1-D mesh over every rank: init_device_mesh(device_type, "
                              "(dist.get_world_size(),)), and shard with fully_shard on it.")
        expect(got.dtype == want.dtype and torch.equal(got, want),
               f"rank {r}: its shard of {name} is not its rows of the model it was given",
               "Shard the model that shard_model receives, as it is: do not re-initialise or replace it.")


def _judge(run: Run) -> str:
    ws, p = run.world_size, run.params
    initial, trained = run.expected["initial"], run.expected["trained"]
    for o in run.ranks:
        _judge_structure(o, ws)
        _judge_shards(o, initial, ws)
        expect(field(o, "given_mesh_used", bool) is True,
               f"rank {o.rank}: shard_model(model, mesh=mesh) did not shard on the given mesh",
               "Use the mesh argument when it is given; build a mesh only when it is None.")
        if p["reshard_after_forward"] is False:
            gathered = field(o, "gathered_after_forward", dict)
            kept = [b for b, yes in gathered.items() if not yes]
            expect(not kept, f"rank {o.rank}: with reshard_after_forward=False, blocks {', '.join(kept)} freed "
                             "their gathered parameters after forward anyway",
                   "Pass **fsdp_kwargs on to every fully_shard call (the blocks and the root).")
    for o in run.ranks:
        after = tensors(o, "trained", trained)
        rows = {n: chunk_of(full, o.rank, ws) for n, full in trained.items()}
        differing = strays(after, rows)
        name, off, numel = differing[0] if differing else ("", 0, 0)
        expect(not differing, f"rank {o.rank}: after {p['steps']} SGD steps its shards differ from its rows of one "
                              f"process trained on the whole batches (worst: {name}, {off} of its {numel} elements, "
                              f"by up to {excess(after[name], rows[name]) + ATOL if differing else 0:.2g})",
               "Shard every block and the root on one mesh over all ranks; the gradients must be averaged over "
               "all ranks' data (do not replace fully_shard's reduce-scatter or the optimizer's parameters).")
    return (f"each block and the root are FSDP units; every parameter is sharded by rows, 1/{ws} per rank "
            f"(exactly each rank's torch.chunk slice); after {p['steps']} steps on secret per-rank data every "
            f"rank's slices match one process trained on the whole batches")


CHECK = Check(id="fsdp.wrap", functions=("shard_model",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=explain, defaults={"seed": 0, "steps": 3, "batch_per_rank": 4, "width": 8, "blocks": 3,
                                         "lr": 0.05, "reshard_after_forward": None})
