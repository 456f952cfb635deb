"""ddp.wrap: wrap_model(model, device) -> DistributedDataParallel: move the model to the device and wrap it
(device_ids only on CUDA).

Scenario: a small EuroSATNet without BatchNorm (BatchNorm would normalise each rank's slice, not
the global batch). Rank 0 receives the reference's starting weights, every other rank weights of
its own (so only DDP's broadcast at construction makes the replicas agree), and each rank
receives only its own slices of a secret global batch, one per step. The rank wraps its model
with the learner's wrap_model, trains `steps` SGD steps on its slices, and returns the weights of
wrapped.module. Here, one process trains rank 0's starting weights on the whole global batches
(checks/ddp/reference.py): every rank must end with those weights. No rank can get them alone:
it holds neither the other ranks' data nor, on ranks > 0, the starting weights.

Tolerance: 1e-4 absolute on every weight. DDP averages the ranks' mean gradients, the reference
takes one mean over the global batch: the same sum in another order, which changes float32
results in the last bits (~1e-7 relative per step); over a few steps with momentum that stays
far below 1e-4, while a rank that trains alone moves its weights by ~1e-2 from the reference
(the check makes sure the reference moved more than 100x the tolerance). GPUs run with TF32 off.
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import expected_devices, max_difference, one_thread, random_state, reads_rank_results, spec

TOLERANCE = 1e-4
LR, MOMENTUM = 0.1, 0.9


def _inputs(trial) -> list:
    import torch

    p, ws = trial.params, trial.world_size
    g = trial.generator()
    starts = [random_state(g, norm=False) for _ in range(ws)]   # rank 0's is the reference start
    slices = [[] for _ in range(ws)]
    for _ in range(p["steps"]):
        images = torch.randn(p["batch_per_rank"] * ws, 3, p["image_size"], p["image_size"], generator=g)
        labels = torch.randint(0, 10, (p["batch_per_rank"] * ws,), generator=g)
        for r, (x, y) in enumerate(zip(images.chunk(ws), labels.chunk(ws))):
            slices[r].append([x.clone(), y.clone()])
    return [{"model": spec(starts[r], norm=False), "batches": slices[r], "lr": LR, "momentum": MOMENTUM}
            for r in range(ws)]


def _expected(trial, inputs) -> dict:
    import torch

    from . import reference

    model = {k: v for k, v in inputs[0]["model"].items() if k != "state"}
    start = inputs[0]["model"]["state"]
    steps = zip(*(x["batches"] for x in inputs))   # step i: every rank's slice i
    global_batches = [(torch.cat([x for x, _ in step]), torch.cat([y for _, y in step])) for step in steps]
    with one_thread():
        together = reference.sgd(start, model, global_batches, lr=LR, momentum=MOMENTUM)
        # What each rank would end with if its gradients were never averaged: from rank 0's start or its own.
        alone = [[reference.sgd(s, model, x["batches"], lr=LR, momentum=MOMENTUM)
                  for s in ([start] if x["model"]["state"] is start else [start, x["model"]["state"]])]
                 for x in inputs]
    assert max_difference(together, start) > 100 * TOLERANCE, "the reference did not train: the check is broken"
    return {"state": together, "alone": alone, "devices": expected_devices(trial)}


@reads_rank_results
def _judge(run: Run) -> str:
    steps, ws = run.params["steps"], run.world_size
    for o in run.ranks:
        r, res = o.rank, o.result
        if not res["is_ddp"]:
            raise CheckFailed(f"rank {r}: wrap_model returned " + ("the model itself, not wrapped in a "
                              "DistributedDataParallel" if res["is_model"] else
                              f"a {res['type']}, not a DistributedDataParallel"),
                              "Wrap the model: DistributedDataParallel(model.to(device), device_ids=...). Without "
                              "DDP nothing averages the gradients and the replicas drift apart.")
        want = run.expected["devices"][r]
        expect(res["param_devices"] == [want],
               f"rank {r}: the model's parameters are on {', '.join(res['param_devices'])}, not on {want}",
               "Move the model to the device before wrapping: model.to(device).")
    worst = 0.0
    for o in run.ranks:
        r, res = o.rank, o.result
        diff = max_difference(res["state"], run.expected["state"])
        worst = max(worst, diff)
        if diff <= TOLERANCE:
            continue
        alone = any(max_difference(res["state"], a) <= TOLERANCE for a in run.expected["alone"][r])
        never_reduced = res.get("buckets") == 0
        raise CheckFailed(f"rank {r}: after {steps} steps its weights differ from one model trained on the global "
                          f"batch by up to {diff:.2e} (tolerance {TOLERANCE:.0e})"
                          + (": each rank trained on its own data only" if alone else ""),
                          "Train through the DDP-wrapped model so that backward() all-reduces the gradients."
                          if never_reduced else
                          "Return the DistributedDataParallel wrapper itself, built over the default process "
                          "group, so gradients are averaged over all ranks.")
    return (f"wrap_model() returned a DistributedDataParallel; after {steps} steps on {ws} rank(s), each holding its "
            f"own slice of a secret batch (and ranks > 0 other starting weights), every replica matches one model "
            f"trained on the global batch (max difference {worst:.1e})")


def _explain(error: dict) -> str | None:
    if "device_ids" in error["message"]:
        return ("device_ids is only for CUDA modules: device_ids=[0] on CPU fails. Pass "
                "device_ids=[device.index] when device.type == 'cuda', else leave it out (None).")
    return None


CHECK = Check(id="ddp.wrap", functions=("wrap_model",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=_explain, defaults={"steps": 4, "batch_per_rank": 4, "image_size": 16})
