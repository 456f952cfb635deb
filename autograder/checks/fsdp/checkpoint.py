"""fsdp.checkpoint: save_full_checkpoint(model, path), called on every rank with an FSDP model, writes the full,
unsharded state dict to `path` once (one rank), as plain tensors that load into the plain model with strict=True,
and no rank returns before the file is complete.

Scenario: a small EuroSATNet with BatchNorm (its buffers must be saved too); weights and statistics
drawn from the call's secret and sent to every rank; the rank driver shards it with the harness's
plan (each block, then the root) and trains two SGD steps, each rank on its own secret batches, so
the parameters and each rank's BatchNorm statistics move away from anything sent. Each rank then
calls save_full_checkpoint and, right after it returns, reads the path and sends back the file's
bytes (or that it is missing, or a folder). Here the bytes are looked at statically (a pickle that
holds DTensors is a sharded-only checkpoint), loaded with torch.load(weights_only=True), and must
equal what reference.py computes from the same secret inputs: the trained parameters and rank 0's
buffers (FSDP2 never synchronises buffers; the gathered state dict carries rank 0's). Every rank
must have read the same complete file.

The rank also watches torch.save (delaying each write by half a second, so a rank that does not
wait for the writer finds no file) and torch.distributed.checkpoint's savers: who wrote, how often.
These observations name "several writers" and "a sharded folder"; they cannot pass a file that
does not hold the secret, trained weights.

Tolerance: the parameters come out of two training steps, ATOL + RTOL (see checks/fsdp/__init__.py), but for
strays (fsdp.strays: at most 1% of a tensor's elements, which a ReLU the summation order tips can move further);
buffers are computed by the same operations on the same data, within the same tolerance.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run, secret_statistics
from . import explain, field, is_state_dict, load_saved, rank_batches, random_state, strays

LR = 0.1
GATHER = ("get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)) on every "
          "rank, then torch.save it on rank 0")


def _inputs(trial) -> list:
    from ...rank.toolkit import build_model

    p, ws = trial.params, trial.world_size
    spec = {"kind": "eurosat", "width": p["width"], "blocks": p["blocks"], "norm": True}
    g = trial.generator(0)
    state = secret_statistics(random_state(g, spec), g)
    batches = rank_batches(trial.generator(1), ws, 2, p["batch_per_rank"])
    units = [name for name, _ in build_model(spec).named_children()] + [""]   # each block, then the root
    nonce = f"{trial.rng.getrandbits(64):016x}"
    return [{"model": {**spec, "state": state}, "units": units, "batches": batches[r], "lr": LR, "nonce": nonce,
             "filename": f"fsdp_full_{nonce[:6]}.pt"} for r in range(ws)]


def _expected(trial, inputs) -> dict:
    from . import reference

    spec = {k: v for k, v in inputs[0]["model"].items() if k != "state"}
    return reference.train_ranks_apart(spec, inputs[0]["model"]["state"], [x["batches"] for x in inputs], lr=LR)


def _judge_file(raw: bytes, want: dict) -> None:
    """The file rank 0 read: a full state dict of plain tensors holding the trained weights."""
    state, problem = load_saved(raw)
    if problem.startswith("sharded"):
        raise CheckFailed(f"the checkpoint holds sharded tensors ({problem[9:]}): a sharded-only checkpoint, with "
                          "only one rank's slice of each parameter",
                          "model.state_dict() of an FSDP model returns each rank's shards. Gather the full, "
                          f"unsharded state dict first: {GATHER}.")
    expect(not problem, f"the checkpoint could not be loaded with torch.load(weights_only=True): {problem}",
           "Save the state dict itself, tensors only (names -> tensors), with torch.save.")
    expect(is_state_dict(state), f"the checkpoint holds a {type(state).__name__}, not a state dict of tensors",
           "Save the model's state dict (parameter and buffer names -> tensors), nothing else in it.")
    shapes = sorted(k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape))
    if shapes:
        raise CheckFailed(f"{', '.join(shapes[:3])} have the shape of one rank's shard, not the full tensor "
                          "(a sharded-only checkpoint)",
                          f"to_local() keeps this rank's slice only. Gather with {GATHER}.")
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    expect(not missing and not unexpected,
           f"the checkpoint's keys do not load strictly into the plain model (missing: {missing[:5]}, "
           f"unexpected: {unexpected[:5]})",
           "Save the state dict with the plain model's names, buffers included: get_model_state_dict(...) gives "
           "exactly that (no wrapper prefix, nothing nested).")
    differing = strays(state, want)
    key, off, numel = differing[0] if differing else ("", 0, 0)
    expect(not differing, f"{off} of the {numel} elements of the saved {key} differ from the model's trained "
                          "(gathered) value",
           "Save the model's current state, gathered when the function is called, not a copy made earlier.")


def _judge(run: Run) -> str:
    writers = [o.rank for o in run.ranks if field(o, "saves", list)]
    sharded = any(field(o, "sharded_saves", list) for o in run.ranks)
    expect(len(writers) <= 1, f"ranks {writers} each wrote the checkpoint (every rank writes the same file)",
           "Only one rank may write: gather on every rank (a collective), then `if dist.get_rank() == 0: "
           "torch.save(...)`. Several writers race on one file, and with cpu_offload=True the other "
           "ranks hold an empty dict.")
    first = run.ranks[0]
    kind = field(first, "kind", str)
    if kind == "directory":
        raise CheckFailed("save_full_checkpoint wrote a folder at the path (a sharded checkpoint, each rank its "
                          "pieces), not one file" + (" with torch.distributed.checkpoint" if sharded else ""),
                          f"Write one file with torch.save on rank 0, from the gathered full state dict: {GATHER}.")
    if kind != "file":
        raise CheckFailed("no checkpoint file at the given path right after save_full_checkpoint() returned on "
                          "rank 0" + (f" (rank {writers[0]} called torch.save)" if writers else ""),
                          "Add dist.barrier() after the write (on every rank, outside the if): nobody returns "
                          "before the file is complete." if writers else
                          "Write the gathered state dict with torch.save on rank 0, to the path argument.")
    raw = field(first, "bytes", bytes)
    _judge_file(raw, run.expected)
    saves = len(field(run.ranks[writers[0]], "saves", list)) if writers else 0
    expect(saves <= 1, f"rank {writers[0] if writers else 0} wrote the checkpoint {saves} times",
           "Call torch.save once, after the whole state dict is gathered.")
    for o in run.ranks[1:]:
        same = field(o, "kind", str) == "file" and field(o, "bytes", bytes) == raw
        expect(same, f"rank {o.rank}: right after save_full_checkpoint() returned, the file was not complete yet "
                     f"(rank {writers[0] if writers else 0} was still writing)",
               "Add dist.barrier() after rank 0's torch.save (on every rank, outside the if): nobody returns "
               "before the file is complete.")
    return (f"one full checkpoint written once (rank {writers[0] if writers else 0}), plain tensors, loads strictly "
            f"into the plain model and holds the trained parameters and rank 0's buffers; complete on every rank "
            f"when the call returns")


CHECK = Check(id="fsdp.checkpoint", functions=("save_full_checkpoint",), inputs=_inputs, expected=_expected,
              judge=_judge, explain=explain, defaults={"seed": 0, "width": 8, "blocks": 3, "batch_per_rank": 4})
