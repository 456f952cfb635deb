"""efficiency.accumulate: accumulation_step(ddp_model, optimizer, batches, loss_fn) -> float makes one optimizer
step over k equal micro-batches, the gradients all-reduced once (no_sync for all but the last), the update that
of one step on the concatenated batch (mean loss), and returns the mean loss.

Scenario: a small EuroSATNet without BatchNorm (per-rank statistics would make one process on the
whole batch a different computation), weights drawn from the call's secret, identical on every rank;
the rank part wraps it in DDP (init_sync=False: no initial broadcast, so the task's traffic is the
step's) with plain SGD, and gives each rank k secret micro-batches. Evidence:

- after the step, every rank's parameters equal one process's SGD step on all ranks' micro-batches
  concatenated (reference.accumulated_step); no rank can produce that alone: each saw only its data;
- the returned loss is the mean of this rank's k micro-batch losses;
- the bytes the job sent over its own loopback during the task, read by the harness from outside
  (session: sandboxed gloo jobs only), are about one all-reduce of the gradients: a ring all-reduce
  sends 2 (N - 1) / N of the buffer from each rank, 2 (N - 1) G bytes in all for G gradient bytes.
  The measured ratio to that (course.yaml: syncs_min, syncs_max) separates one all-reduce from k
  (no_sync forgotten) and from none. Not measured at one rank (nothing to send), on NCCL (GPU
  traffic does not cross the loopback) or without the sandbox (the host's loopback is shared): the
  verdict says so and rests on the weights.

What the rank observes (optimizer steps, the gradient numbers DDP's comm hook all-reduced) only
names a failure. Tolerance: ATOL + RTOL x |w| on the weights: the all-reduce sums the ranks'
gradients in another order than one process's backward over the whole batch (measured: 1.5e-8 on
weights ~0.1); a loss not divided by k moves the update k-fold (~1e-3 here), an extra optimizer
step by a whole step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..draws import random_state, rank_batches
from ..replies import field, reply, tensors

ATOL, RTOL = 1e-6, 1e-4
LOSS_RTOL = 1e-4
NO_SYNC_HINT = ("Run the forward and backward of every micro-batch but the last inside `with "
                "ddp_model.no_sync():`; the last one outside it, so that its backward all-reduces the accumulated "
                "gradients once.")


@dataclass(frozen=True)
class AccumulateThresholds:
    syncs_min: float   # bytes sent / one ring all-reduce of the gradients: at least this
    syncs_max: float   # and at most this (k all-reduces give ~k)


def _spec(p: dict) -> dict:
    return {"kind": "eurosat", "width": p["width"], "blocks": p["blocks"], "norm": False}


def _inputs(trial) -> list:
    p, ws = trial.params, trial.world_size
    spec = _spec(p)
    state = random_state(trial.generator(0), spec)
    batches = rank_batches(trial.generator(1), ws, p["k"], p["micro_batch"], size=p["image"])   # [rank][micro]
    return [{"model": {**spec, "state": state}, "batches": batches[r], "lr": p["lr"]} for r in range(ws)]


def _expected(trial, inputs) -> dict:
    from . import reference

    spec = {k: v for k, v in inputs[0]["model"].items() if k != "state"}
    state = inputs[0]["model"]["state"]
    weights, losses = reference.accumulated_step(spec, state, [x["batches"] for x in inputs], lr=inputs[0]["lr"])
    return {"initial": {n: state[n] for n in weights}, "weights": weights, "losses": losses}


def _gap(got: dict, want: dict) -> tuple[float, str]:
    """(largest |got - want| beyond ATOL + RTOL |want|, its name); > 0: outside the tolerance."""
    return max((float(((got[n].float() - w).abs() - (ATOL + RTOL * w.abs())).max())
                if got[n].shape == w.shape else math.inf, n) for n, w in want.items())


def _update_ratio(got: dict, initial: dict, want: dict) -> float:
    """|got - initial| / |want - initial| over all parameters (k: the loss was not divided by k)."""
    num = sum(float((got[n].float() - initial[n]).norm() ** 2) for n in want)
    den = sum(float((want[n] - initial[n]).norm() ** 2) for n in want)
    return math.sqrt(num / den) if den else math.inf


def _judge_weights(run: Run, weights: dict) -> None:
    p, ws, exp = run.params, run.world_size, run.expected
    k = p["k"]
    for o in run.ranks:
        r = o.rank
        gap, name = _gap(weights[r], exp["weights"])
        if gap <= 0:
            continue
        steps = field(o, "optimizer_steps", int)
        if ws > 1 and any(_gap(weights[r], weights[q])[0] > 0 for q in range(ws)):
            expect(field(o, "synced_numel", int) > 0,
                   f"rank {r}: after the step the ranks hold different weights: DDP never all-reduced a gradient",
                   "The last micro-batch must run outside no_sync(): its backward is where DDP all-reduces the "
                   "gradients accumulated over all k micro-batches. " + NO_SYNC_HINT)
        expect(steps == 1, f"rank {r}: the optimizer stepped {steps} times for {k} micro-batches",
               "Accumulate: call optimizer.step() (and zero_grad()) once per accumulation_step, after the last "
               "micro-batch's backward, not after each micro-batch.")
        ratio = _update_ratio(weights[r], exp["initial"], exp["weights"])
        expect(abs(ratio - k) > 0.05 * k,
               f"rank {r}: the update is {ratio:.2f}x that of one step on the whole batch (k = {k})",
               f"Divide each micro-batch's loss by k (= len(batches)) before backward: gradients add up over the "
               f"{k} backwards, and the mean over the whole batch is their sum / k.")
        raise CheckFailed(f"rank {r}: after the step its weights differ from one SGD step on all ranks' "
                          f"micro-batches concatenated (worst: {name}, {gap + ATOL:.2g} beyond rounding; the update "
                          f"is {ratio:.2f}x the expected one)",
                          "zero_grad() once, then forward and backward each micro-batch with its loss / k (no_sync "
                          "for all but the last), then optimizer.step() once.")


def _judge_bytes(run: Run, numel: int) -> str:
    ws, t, sent = run.world_size, run.thresholds, run.sent_bytes
    if ws < 2:
        return "bytes not measured: one rank has nothing to send"
    if sent is None:
        return ("bytes NOT MEASURED here (NCCL traffic does not cross the loopback; without the sandbox the "
                "loopback is the host's)")
    one = 2 * (ws - 1) * 4 * numel   # a ring all-reduce of the float32 gradients, every rank's share
    syncs = sent / one
    figures = f"{sent / 2**10:,.0f} KiB on the loopback, {syncs:.2f}x one all-reduce of the gradients"
    k = run.params["k"]
    expect(syncs <= t.syncs_max, f"right weights, but the step sent {figures} (k = {k}): the gradients were "
                                 "all-reduced more than once", "You forgot no_sync: " + NO_SYNC_HINT)
    expect(syncs >= t.syncs_min, f"right weights, but the step sent only {figures}: the gradients did not "
                                 "travel through the process group",
           "Let DDP all-reduce the gradients: " + NO_SYNC_HINT)
    return figures


def _judge(run: Run):
    ws, exp = run.world_size, run.expected
    weights = {o.rank: tensors(o, "weights", exp["weights"]) for o in run.ranks}
    for o in run.ranks:
        loss = reply(o).get("loss")
        expect(isinstance(loss, float), f"rank {o.rank}: accumulation_step returned a {loss}, not a float",
               "Return the mean loss as a Python float: sum each micro-batch's loss.item() / k.")
    _judge_weights(run, weights)
    for o in run.ranks:
        got, want = reply(o)["loss"], exp["losses"][o.rank]
        expect(abs(got - want) <= LOSS_RTOL * max(1.0, abs(want)),
               f"rank {o.rank}: returned loss {got:.6g}, the mean of its {run.params['k']} micro-batch losses is "
               f"{want:.6g}", "Return the mean over the micro-batches: the sum of each (loss / k).item().")
    numel = sum(w.numel() for w in exp["weights"].values())   # from the trusted spec, never from a rank
    figures = _judge_bytes(run, numel)
    details = {"bytes": {"sent": run.sent_bytes, "one_allreduce": 2 * (ws - 1) * 4 * numel if ws > 1 else 0,
                         "k": run.params["k"], "world_size": ws}}
    return (f"{run.params['k']} micro-batches per rank on {ws} rank(s): every rank's weights equal one step on "
            f"the whole batch, the loss is the mean; {figures}"), details


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "no_sync" in text and "context" in text:
        return "no_sync() is a context manager: `with ddp_model.no_sync(): ...`."
    if "NotImplementedError" in text:
        return "Write accumulation_step: the cell still raises NotImplementedError."
    return None


CHECK = Check(id="efficiency.accumulate", functions=("accumulation_step",), inputs=_inputs, expected=_expected,
              judge=_judge, explain=_explain, thresholds=AccumulateThresholds,
              defaults={"seed": 0, "k": 3, "micro_batch": 4, "width": 8, "blocks": 3, "image": 32, "lr": 0.1})
