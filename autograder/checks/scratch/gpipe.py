"""scratch.gpipe: gpipe_step(stage, inputs, labels, n_microbatches, loss_fn) -> float | None: one GPipe step
written by hand with dist.isend/dist.irecv, the ranks as consecutive stages: all forwards, then all
backwards, microbatch by microbatch; inputs on rank 0, labels on the last rank; the mean microbatch
loss returned on the last rank (None elsewhere); gradients accumulated as the mean over microbatches.

Scenario (secret weights, images and labels; rank r receives only stage r, rank 0 only the
inputs, the last rank only the labels): a small network cut into one stage per rank whose
activations change shape at every cut (3-D after stage 0, 4-D after a middle stage: the shape
must travel first). Every stage ends in a pace layer, an identity whose forward sleeps 40 ms
and backward 80 ms per microbatch (by default), so that a step has a known duration:

    a pipelined step (fill and drain, 05's picture):     (m + p - 1) x (40 + 80) ms
    stages that take turns (no two stages ever overlap):  p x m x (40 + 80) ms

Correctness: every stage's gradients equal the full batch's (reference.gpipe_gradients: the
mean of the microbatch losses, i.e. ScheduleGPipe's scaling), 1e-4 relative (float32, another
summation order); the loss on the last rank equals the mean microbatch loss.

Fill and drain, measured from outside: the harness times the task (inputs sent -> last reply);
it must stay under the midpoint between the pipelined and the taking-turns durations (at 2
stages x 4 microbatches: 0.60 s vs 0.96 s, pass line 0.78 s). The pace layers sleep, so a busy
machine moves the figure little; the transfers and the Python around them still need the CPU: on 2
cores under a load of 8-10 the reference took 0.03-0.13 s more than the ideal, which the paces are
long enough to absorb. When each stage computed (the pace layers' records, inside the
ranks) is drawn as the timeline: an illustration, never evidence. With one rank nothing is
pipelined and only correctness is checked. A deadlock (a stage waiting for a message its
neighbour never sends) ends as a TIME-OUT that names each rank's line.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed
from .. import Check, Run
from ..replies import reads_rank_results
from . import close, fmt_names, ratio


def _stage_specs(trial) -> tuple[list[dict], dict]:
    import torch

    from ...rank.parts._scratch_models import build_stage
    from ...rank.toolkit import state_of

    rng, p, m = trial.rng, trial.world_size, int(trial.params["microbatches"])
    rows = rng.randint(3, 5)
    forward = float(trial.params["pace_ms"]) / 1000
    d_in, classes = rng.randint(6, 10), rng.randint(3, 6)
    shapes = [[rng.randint(3, 5), rng.randint(2, 4)] if s == 0 else [rng.randint(2, 3), rng.randint(2, 3), 2]
              for s in range(p - 1)]
    specs = []
    for s in range(p):
        layers = [] if s == 0 else [["flatten"]]
        width = d_in if s == 0 else math.prod(shapes[s - 1])
        if s == p - 1:
            hidden = rng.randint(8, 14)
            layers += [["linear", width, hidden], ["tanh"], ["linear", hidden, classes]]
        else:
            layers += [["linear", width, math.prod(shapes[s])], ["tanh"], ["unflatten", shapes[s]]]
        layers.append(["pace", forward / rows, 2 * forward / rows])
        spec = {"layers": layers}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trial.generator(300 + s).initial_seed())
            spec["state"] = state_of(build_stage(spec, paced=False))
        specs.append(spec)
    g = trial.generator(400)
    batch = {"x": torch.randn(m * rows, d_in, generator=g), "y": torch.randint(0, classes, (m * rows,), generator=g),
             "slot": 3 * forward}
    return specs, batch


def _inputs(trial) -> list:
    specs, batch = _stage_specs(trial)
    p, m = trial.world_size, int(trial.params["microbatches"])
    return [{"stage": specs[r], "n_microbatches": m, "inputs": batch["x"] if r == 0 else None,
             "labels": batch["y"] if r == p - 1 else None, "slot": batch["slot"]} for r in range(p)]


def _expected(trial, inputs) -> dict:
    from . import reference

    return reference.gpipe_gradients([x["stage"] for x in inputs], inputs[0]["inputs"], inputs[-1]["labels"],
                                     int(trial.params["microbatches"]))


def _timeline(run: Run) -> list:
    """[rank, "F"|"B", microbatch, start, end] from the pace layers' records (seconds since the first start)."""
    events = []
    for o in run.ranks:
        counts = {"F": 0, "B": 0}
        for kind, start, end in o.result.get("events") or []:
            events.append([o.rank, kind, counts[kind], start, end])
            counts[kind] += 1
    t0 = min((e[3] for e in events), default=0.0)
    return [[r, k, mb, s - t0, e - t0] for r, k, mb, s, e in events]


def _gradients(run: Run, m: int) -> None:
    for o in run.ranks:
        got, want = o.result["grads"], run.expected["grads"][o.rank]
        missing = [n for n in want if got.get(n) is None]
        if missing:
            raise CheckFailed(f"stage {o.rank}: {fmt_names(missing)} have no gradient after gpipe_step",
                              "Backward must reach every stage: on a stage after the first, make the received "
                              "activation a leaf that requires grad (x.requires_grad_()), run backward from the "
                              "output with the gradient received from the next stage, and send x.grad back.")
        wrong = [n for n in want if not close(got[n], want[n])]
        if not wrong:
            continue
        ratios = [ratio(got[n], want[n]) for n in wrong]
        if m > 1 and all(q is not None and abs(q - m) < 0.02 * m for q in ratios):
            raise CheckFailed(f"stage {o.rank}: the gradients are {m}x the full batch's: the {m} microbatch gradients "
                              f"were added up without scaling",
                              f"Each microbatch's loss must count 1/{m}: backward (loss_i / n_microbatches) on the last "
                              f"stage (ScheduleGPipe's scaling), so that the accumulated gradient is the mean.")
        if m > 1 and all(q is not None and abs(q - 1 / m) < 0.02 / m for q in ratios):
            raise CheckFailed(f"stage {o.rank}: the gradients are 1/{m} of the full batch's: they were scaled twice",
                              "Divide each microbatch's loss by n_microbatches once, on the last stage only.")
        raise CheckFailed(f"stage {o.rank}: the gradients of {fmt_names(wrong)} differ from the full batch's",
                          "Every microbatch must go forward through every stage and back, in the same order on "
                          "every rank; each stage runs backward from the output it produced for that microbatch.")


def _loss(run: Run, m: int) -> None:
    last, want = run.ranks[-1], run.expected["loss"]
    for o in run.ranks[:-1]:
        if o.result["loss"] is not None:
            raise CheckFailed(f"rank {o.rank} (not the last stage) returned {o.result['loss']!r}",
                              "Only the last stage computes the loss: return None on every other rank.")
    got = last.result["loss"]
    if not isinstance(got, float):
        raise CheckFailed(f"the last rank returned {got!r} ({last.result['loss_type']}), not the mean loss",
                          "Return the mean of the microbatch losses as a float on the last rank (e.g. "
                          "torch.stack(losses).mean().item()).")
    if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
        return
    if math.isclose(got, m * want, rel_tol=1e-4):
        raise CheckFailed(f"the last rank returned {got:.5g}, the sum of the {m} microbatch losses; the mean is "
                          f"{want:.5g}", "Return the mean of the microbatch losses, not their sum.")
    if any(math.isclose(got, x, rel_tol=1e-4) for x in run.expected["microbatch_losses"]):
        raise CheckFailed(f"the last rank returned {got:.5g}, one microbatch's loss; the mean over the {m} "
                          f"microbatches is {want:.5g}", "Keep every microbatch's loss and return their mean.")
    raise CheckFailed(f"the last rank returned {got:.5g}; the mean microbatch loss is {want:.5g}",
                      "Compute loss_fn(output, labels of the microbatch) for each microbatch on the last stage; "
                      "return the mean.")


@reads_rank_results
def _judge(run: Run):
    from ...timeline import bubble_formula, measured_bubble

    p, m = run.world_size, int(run.params["microbatches"])
    _gradients(run, m)
    _loss(run, m)
    events = _timeline(run)
    slot = run.inputs[0]["slot"]
    ideal, serial = (m + p - 1) * slot, p * m * slot
    name = "your gpipe_step (recorded in the ranks)"
    details = {"timeline": {"schedules": {name: events}, "n_microbatches": m,
                            "bubble": {name: {"measured": measured_bubble(events, p) if events else 0.0,
                                              "formula": bubble_formula(p, m)}},
                            "seconds": {name: round(run.seconds, 3)}}}
    if p == 1:
        return f"gpipe_step on 1 stage: the gradients and the loss match the full batch's ({m} microbatches)", details
    line = ideal + 0.5 * (serial - ideal)
    if run.seconds > line:
        firsts = {r: min((e[3] for e in events if e[0] == r and e[1] == "F"), default=None) for r in range(p)}
        lasts = {r: max((e[4] for e in events if e[0] == r and e[1] == "F"), default=None) for r in range(p)}
        late = [r for r in range(1, p) if firsts[r] is not None and lasts[r - 1] is not None
                and firsts[r] >= lasts[r - 1] - 1e-3]
        hint = (f"Stage {late[0]} started its first forward only after stage {late[0] - 1} had finished all of its "
                "forwards (recorded in the ranks): send each microbatch's activation as soon as it is computed "
                "(dist.isend, waited for at the end), and receive and compute microbatch by microbatch."
                if late else
                "The stages waited for each other instead of working on different microbatches at once: post "
                "sends with dist.isend and wait for them at the end of the step; receive each microbatch just "
                "before computing it.")
        raise CheckFailed(f"one step took {run.seconds:.2f} s, timed by the harness: a GPipe step over {p} stages and "
                          f"{m} microbatches takes about {ideal:.2f} s (fill and drain, (m+p-1) slots of "
                          f"{1000 * slot:.0f} ms), stages that take turns {serial:.2f} s; pass line {line:.2f} s",
                          hint, details)
    return (f"gpipe_step over {p} stages, {m} microbatches: the gradients equal the full batch's and the loss the mean "
            f"microbatch loss; one step took {run.seconds:.2f} s, timed by the harness (pipelined: about "
            f"{ideal:.2f} s, stages taking turns: {serial:.2f} s): the stages overlapped (fill and drain)"), details


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "does not require grad" in text or "element 0 of tensors" in text:
        return ("On stages after the first, the received activation must require grad (x.requires_grad_()) before "
                "the stage runs on it, so that backward can compute the gradient to send back.")
    if "size" in text.lower() and ("mismatch" in text.lower() or "shape" in text.lower()):
        return ("A received tensor has another shape than the one sent: send the shape first (e.g. its number of "
                "dimensions and sizes in a fixed-length int64 tensor), then allocate the buffer from it.")
    return None


CHECK = Check(id="scratch.gpipe", functions=("gpipe_step",), inputs=_inputs, expected=_expected, judge=_judge,
              explain=_explain, defaults={"microbatches": 4, "pace_ms": 40}, by_hand=True)
