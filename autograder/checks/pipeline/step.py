"""pipeline.step: train_step(schedule, optimizer, inputs, labels) -> the batch's mean loss on the last rank, else None.

Contract: one optimizer step per batch: zero_grad, schedule.step (inputs on the first rank,
target and losses on the last), optimizer.step; return the mean of the microbatch losses as
a float on the last rank, None on the others.

Scenario: the harness builds each rank's stage of a model without BatchNorm (weights from the
call's secret), a GPipe schedule and an SGD optimizer with momentum over the stage, and calls
train_step on `batches` secret batches: the images on rank 0, the labels on the last rank
(elsewhere zeros of the same shape, which a correct train_step never reads). Each rank returns
what train_step returned and its stage's weights after every batch. Here the same batches are
replayed on the plain model (microbatch by microbatch, SGD with the same settings), and once
more without zero_grad, to name that mistake.

Tolerance: weights relative error 1e-4 per tensor (max |difference| / max |expected|) after
each batch; losses relative 1e-4. Without BatchNorm the pipeline computes the plain model's
function and only float32 sums run in another order (~1e-6 after a few steps); gradients that
accumulate across batches or a skipped optimizer step change the weights by 1e-2 or more.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import absent, explain, images, labels, readable, secret_model, stage_shares, worst_error

RTOL = 1e-4
LR, MOMENTUM = 0.05, 0.9


def _inputs(trial) -> list:
    p = trial.params
    ws, m, n = trial.world_size, int(p["microbatches"]), int(p["batches"])
    size = m * int(p["microbatch_size"])
    spec, state = secret_model(trial, 1, norm=False)
    xs = [images(trial, size, 10 + i) for i in range(n)]
    ys = [labels(trial, size, 20 + i) for i in range(n)]
    return [{"stage": share, "microbatches": m, "lr": LR, "momentum": MOMENTUM,
             "images": xs if r == 0 else [absent(x) for x in xs],
             "labels": ys if r == ws - 1 else [absent(y) for y in ys]}
            for r, share in enumerate(stage_shares(spec, state, ws))]


def _expected(trial, inputs) -> dict:
    from . import reference

    spec = inputs[0]["stage"]["model"]
    state = {k: v for x in inputs for k, v in x["stage"]["state"].items()}
    batches = list(zip(inputs[0]["images"], inputs[-1]["labels"]))
    m = inputs[0]["microbatches"]
    return {mode: reference.train_steps(spec, state, batches, m, lr=LR, momentum=MOMENTUM, zero_grad=zero)
            for mode, zero in (("correct", True), ("accumulate", False))}


def _explain_weights(r: int, res: dict, batch: int, err: float, matches_accumulate: bool) -> CheckFailed:
    """The hint for a stage whose weights left the reference's path after `batch` (0-based)."""
    seen = res["seen"]
    counts = seen["optimizer_steps"]
    per_batch = [b - a for a, b in zip([0] + counts, counts)]
    if matches_accumulate:
        return CheckFailed(f"rank {r}: after batch {batch + 1} the stage's parameters match training whose "
                           "gradients are never zeroed (they accumulate across batches)",
                           "Call optimizer.zero_grad() at the start of train_step: pipeline schedules add "
                           "into .grad and never clear it.")
    if any(k == 0 for k in per_batch):
        return CheckFailed(f"rank {r}: the stage's parameters differ from single-process training after batch "
                           f"{batch + 1}; the optimizer stepped {counts[-1]} time(s) in {len(counts)} batches "
                           f"(per batch: {per_batch})",
                           "Call optimizer.step() once per batch, inside train_step after schedule.step; "
                           "stepping once per epoch wastes every other batch's gradients.")
    if any(k > 1 for k in per_batch):
        return CheckFailed(f"rank {r}: the stage's parameters differ from single-process training; the optimizer "
                           f"stepped {max(per_batch)} times for one batch",
                           "Call optimizer.step() once per batch, after schedule.step, not once per microbatch.")
    calls = seen["calls"]
    if len(calls) != len(counts):
        return CheckFailed(f"rank {r}: the stage's parameters differ from single-process training; schedule.step "
                           f"ran {len(calls)} times for {len(counts)} batches",
                           "Call schedule.step exactly once per batch: the schedule itself runs the microbatches.")
    return CheckFailed(f"rank {r}: after batch {batch + 1} the stage's parameters differ from single-process "
                       f"training on the same batches (relative error {err:.2g}, tolerance {RTOL:g})",
                       "One step per batch: zero_grad(), schedule.step(...) (inputs on the first rank, "
                       "target on the last), optimizer.step().")


@readable
def _judge(run: Run) -> str:
    ws, m, n = run.world_size, run.params["microbatches"], run.params["batches"]
    results = [o.result for o in run.ranks]
    correct, accumulate = run.expected["correct"], run.expected["accumulate"]
    for r, res in enumerate(results):
        names = list(run.inputs[r]["stage"]["state"])
        states = res["states"]
        expect(len(states) == n, f"rank {r} returned the weights of {len(states)} batches, expected {n}")
        for i in range(n):
            err, _ = worst_error(states[i], {k: correct["states"][i][k] for k in names})
            if err > RTOL:
                acc, _ = worst_error(states[i], {k: accumulate["states"][i][k] for k in names})
                raise _explain_weights(r, res, i, err, acc <= RTOL)
    for r, res in enumerate(results[:-1]):
        got = [x["type"] for x in res["returned"]]
        expect(all(t == "NoneType" for t in got), f"rank {r} (not the last stage) returned {got[0]}, not None",
               "Only the last stage has the loss: return None on the other ranks.")
    last = results[-1]["returned"]
    for i, (got, want) in enumerate(zip(last, correct["losses"])):
        expect(got["type"] in ("float", "int"), f"the last rank returned a {got['type']}, not a float",
               "Return a Python float: e.g. torch.stack(losses).mean().item().")
        value = got["value"]
        if not math.isclose(value, want, rel_tol=RTOL, abs_tol=1e-6):
            if math.isclose(value, want * m, rel_tol=1e-3):
                hint = "That is the sum of the microbatch losses: return their mean."
            elif math.isclose(value, correct["chunk_losses"][i][-1], rel_tol=RTOL):
                hint = "That is the last microbatch's loss only: return the mean over all microbatches."
            else:
                hint = "Return the mean of the losses the schedule put in losses=[...], as a float."
            raise CheckFailed(f"batch {i + 1}: train_step returned loss {value:.5f}, expected {want:.5f} (the mean "
                              f"over the {m} microbatches)", hint)
    return (f"{n} secret batches: every stage's weights on all {ws} ranks follow single-process SGD (rtol {RTOL:g}) "
            "and the returned losses match")


CHECK = Check(id="pipeline.step", functions=("train_step",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=explain, defaults={"microbatches": 4, "microbatch_size": 2, "batches": 3})
