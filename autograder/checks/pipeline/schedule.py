"""pipeline.schedule: make_schedule(stage, n_microbatches, loss_fn) -> a torch.distributed.pipelining schedule.

Contract: the schedule runs each batch as n_microbatches microbatches, computes loss_fn on
the last stage for each of them, runs backward, and leaves .grad holding the mean over
microbatches (the whole batch's mean-loss gradient).

Scenario: the harness splits a model without BatchNorm (weights from the call's secret) into
one stage per rank and builds each rank's stage itself, so only make_schedule is tested; rank 0
gets a batch of secret images, the last rank its labels. The rank drives two steps (gradients
cleared before each) and returns the last rank's microbatch losses and every rank's gradients.
Expected values are replayed here on the plain model, microbatch by microbatch.

Tolerance: losses relative 1e-4; gradients relative error 1e-4 per tensor (max |difference| /
max |expected|). Without BatchNorm the pipeline computes exactly the plain model's function;
only float32 sums run in another order (~1e-6). Summed instead of averaged gradients are off
by a factor m; a schedule without loss computes no gradient at all.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import explain, first_and_last, images, labels, readable, secret_model, stage_shares, worst_error

RTOL = 1e-4
STEPS = 2


def _inputs(trial) -> list:
    p = trial.params
    m, mb = int(p["microbatches"]), int(p["microbatch_size"])
    spec, state = secret_model(trial, 1, norm=False)
    ends = first_and_last(trial.world_size, images(trial, m * mb, 2), labels(trial, m * mb, 3))
    return [{"stage": share, "microbatches": m, "steps": STEPS, **end}
            for share, end in zip(stage_shares(spec, state, trial.world_size), ends)]


def _expected(trial, inputs) -> dict:
    from . import reference

    spec = inputs[0]["stage"]["model"]
    state = {k: v for x in inputs for k, v in x["stage"]["state"].items()}
    return reference.schedule_step(spec, state, inputs[0]["images"], inputs[-1]["labels"], inputs[0]["microbatches"])


def _hint_from_steps(results: list[dict], m: int, mb: int) -> None:
    """What the recorded steps say about a schedule that produced no (or wrong) losses: a CheckFailed, or nothing."""
    for r, res in enumerate(results):
        for step in res["seen"]["steps"]:
            f, b = step["forwards"], step["backwards"]
            if f != m:
                raise CheckFailed(f"asked for {m} microbatches, the schedule ran {f} forward pass(es) per step on "
                                  f"rank {r} (microbatches of {step['input_batches'][:1] or '?'} images)",
                                  "make_schedule ignores n_microbatches: pass it on, e.g. ScheduleGPipe(stage, "
                                  "n_microbatches=n_microbatches, loss_fn=loss_fn); do not write a fixed number.")
            if b == 0:
                raise CheckFailed(f"rank {r} ran no backward pass: the schedule has no loss function",
                                  "Pass loss_fn=loss_fn to the schedule: without it, step() only runs forward.")
            if b != m:
                raise CheckFailed(f"rank {r} ran {b} backward passes for {m} microbatches",
                                  "Use one of the built-in schedules (ScheduleGPipe or Schedule1F1B) unchanged.")
            if r == 0 and any(x != mb for x in step["input_batches"]):
                raise CheckFailed(f"the first stage got microbatches of {step['input_batches']} images, expected {mb} "
                                  "each", "Let the schedule split the batch: one microbatch is batch_size // "
                                          "n_microbatches images.")


@readable
def _judge(run: Run) -> str:
    import torch

    m, mb = run.params["microbatches"], run.params["microbatch_size"]
    results = [o.result for o in run.ranks]
    for res in results:
        expect(res["is_schedule"], f"make_schedule returned a {res['seen']['type']}, not a pipeline schedule",
               "Return a schedule from torch.distributed.pipelining, e.g. ScheduleGPipe(stage, n_microbatches, "
               "loss_fn=loss_fn).")
    name = results[0]["seen"]["type"]
    declared = next((res["seen"]["declared"] for res in results if res["losses"] is None and res["grads"] is None),
                    None)
    if declared is not None:
        raise CheckFailed(f"asked for {m} microbatches, make_schedule built a {name} for {declared}",
                          "make_schedule ignores n_microbatches: pass it on, e.g. ScheduleGPipe(stage, "
                          "n_microbatches=n_microbatches, loss_fn=loss_fn); do not write a fixed number.")
    want = run.expected
    got = results[-1]["losses"] or []
    for i, step_losses in enumerate(got[:STEPS] if len(got) == STEPS else [None]):
        if (not isinstance(step_losses, list) or len(step_losses) != m
                or not all(isinstance(x, torch.Tensor) and x.numel() == 1 for x in step_losses)):
            _hint_from_steps(results, m, mb)
            count = len(step_losses) if isinstance(step_losses, list) else 0
            raise CheckFailed(f"step {i + 1}: the last stage reported {count} microbatch losses, expected {m}",
                              "Pass loss_fn to the schedule; the last stage then computes one loss per microbatch.")
        values = [float(x) for x in step_losses]
        if not all(math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-6) for a, b in zip(values, want["losses"])):
            _hint_from_steps(results, m, mb)
            raise CheckFailed(f"the microbatch losses {[round(x, 4) for x in values]} are not the loss function's "
                              f"{[round(x, 4) for x in want['losses']]} on the batch's microbatches",
                              "Pass the loss_fn you are given to the schedule, unchanged.")
    for r, res in enumerate(results):
        grads = res["grads"] or {}
        mine = {n: want["grads"][n] for n in run.inputs[r]["stage"]["state"]}
        err, where = worst_error(grads, mine)
        if err <= RTOL:
            continue
        _hint_from_steps(results, m, mb)
        g = grads.get(where)
        scale = float(g.double().norm() / mine[where].double().norm()) if isinstance(g, torch.Tensor) and \
            g.shape == mine[where].shape else float("nan")
        hint = ("The gradients are the sum over microbatches, not the mean: keep scale_grads=True (the default) "
                "when loss_fn returns a mean." if math.isclose(scale, m, rel_tol=1e-2) else
                "Use the schedule's defaults, so that gradients are averaged over the microbatches.")
        raise CheckFailed(f"rank {r}: after one step, {where!r}'s gradient is {scale:.3g} x the whole batch's "
                          f"mean-loss gradient (relative error {err:.2g}, tolerance {RTOL:g})", hint)
    return (f"{name} runs {m} microbatches of {mb} images with backward on all {run.world_size} ranks: the "
            "microbatch losses and every stage's gradients match the plain model's on secret data")


CHECK = Check(id="pipeline.schedule", functions=("make_schedule",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=explain, defaults={"microbatches": 3, "microbatch_size": 2})
