"""pipeline.train: the whole pipeline_train.py, checked for training the right weights and for its speed-up.

Contract: main(argv) trains EuroSATNet with one stage per rank, each batch split into
--microbatches microbatches; it saves every stage with DCP and evaluates the reassembled model.
With m microbatches it must be faster than with one (the stages overlap).

Scenario (measured.py): two jobs side by side, the learner's script and the reference solution's
(the source notebook's pipeline_parts.py and pipeline_train.py, in processes the learner's code
is not in). The script's load_data is replaced by the harness's secret data (images on the first
rank, labels and the validation set on the last rank) and --seed, which sets the initial weights
and the batch order, is secret too. The last rank returns its training losses and the whole model
reassembled from the script's checkpoint (with the script's own load_full_model).
1. Untimed, both jobs at once on the same data with m microbatches: the learner's weights and
   losses must be the reference's. This also pays every first call (process group, imports, the
   tracer) outside the timed rounds.
2. `rounds` rounds, each on new secret data and --seed, run three sides in rotating order
   (rounds.timed_rounds), each timed from outside (inputs sent -> last reply):
     baseline     the reference with 1 microbatch (the stages take turns: no overlap),
     calibration  the reference with m microbatches (what this machine can reach right now),
     learner      the learner's script with m microbatches (its weights compared again).
Decision: rounds.speed_figure (pass line max(floor_efficiency x ideal, reference_share x the
reference's speed-up); inconclusive, never a fail, when even the reference misses the floor, or
when the learner's m-microbatch runs kept pace_share of the reference's m-microbatch runs in the
same rounds). A close miss (one round reached the line) gets more rounds, up to max_rounds
(rounds.more_rounds): on 2 cores the reference's rounds spread over 0.9-1.6x, and medians of
three such rounds once failed the reference itself, graded as a learner, in CI.
Without a reference (the student pack) the learner's own 1-microbatch runs are the baseline and
the floor is the line (rounds.self_baseline); the weights are then not compared.
`judge_speed=False` (a hidden correctness variant) stops after step 1, with `steps` steps.

Tolerance of the weights: the learner's run must end with the reference's weights (BatchNorm
statistics included) and losses on the same data: relative error 1e-3 per tensor (max |difference|
/ max |expected|), losses relative 1e-4. Both pipelines run the same float32 layers on the same
microbatches from the same initial weights: on CPUs the manual frontend (PipelineStage) against
the reference's tracer gave bitwise equal weights after 5 steps; on GPUs kernels may sum in another
order, hence the margin. The mistakes are far off: another microbatch count (BatchNorm statistics),
one optimizer step per epoch, or an optimizer over tensors the stage does not train were all off by
a relative error of 1 or more.

The timeline picture (details["timeline"]) is recorded in the learner's ranks after the timed
rounds (one GPipe and one 1F1B step on the learner's stages): an illustration, not evidence.
"""
from __future__ import annotations

import math

from ... import rounds
from ...rank.timeline import ideal_speedup, merge_timelines
from ...verdict import CheckFailed, expect
from .. import Check
from . import absent, explain, images, labels, read_carefully, secret_model, worst_error

STATE_RTOL = 1e-3
LOSS_RTOL = 1e-4
N_VAL = 16          # validation images: the script evaluates them once per run (kept small: it is timed)


def _shares(trial, salt: int, ws: int, batch: int, steps: int) -> list[dict]:
    """Per rank: the script's data, only what that rank reads; shapes of zeros elsewhere."""
    n = batch * steps
    x, y = images(trial, n, salt), labels(trial, n, salt + 1)
    vx, vy = images(trial, N_VAL, salt + 2), labels(trial, N_VAL, salt + 3)
    return [{"train_x": x if r == 0 else absent(x), "train_y": y if r == ws - 1 else absent(y),
             "val_x": vx if r == ws - 1 else absent(vx), "val_y": vy if r == ws - 1 else absent(vy)}
            for r in range(ws)]


def _run_inputs(trial, salt: int, ws: int, microbatches: int, steps: int, name: str) -> list[dict]:
    """Every rank's inputs for one run of main(): argv (the same on every rank) and that rank's data."""
    batch = int(trial.params["batch_size"])
    seed = trial.generator(salt + 7).initial_seed() % 2**31
    argv = ["--microbatches", str(microbatches), "--batch-size", str(batch), "--max-steps", str(steps),
            "--epochs", "1", "--data", "synthetic", "--limit", str(batch * steps + N_VAL), "--seed", str(seed)]
    return [{"argv": argv, "data": share, "folder": name} for share in _shares(trial, salt, ws, batch, steps)]


def _learner_run(result, steps: int, k: int) -> dict:
    """The last rank's report of one learner run, checked for form; hints from every rank's observations."""
    outs = result.results()
    last = outs[-1]
    for r, out in enumerate(outs):
        seen = out["seen"]
        n_steps = len(seen["steps"])
        expect(n_steps > 0, f"rank {r}: main() trained without calling schedule.step (--microbatches {k})",
               "Train with a pipeline schedule: train_step(schedule, optimizer, images, labels) for every batch.")
    expect(last["losses"] is not None and len(last["losses"]) == steps
           and all(math.isfinite(x) for x in last["losses"]),
           f"the last rank's metrics hold {len(last['losses'] or [])} finite training losses for {steps} steps",
           "Append train_step's loss on the last rank, once per step.")
    acc = last["val_accuracy"]
    expect(acc is not None and 0 <= acc <= 1, f"the last rank's metrics have val_accuracy={acc!r}",
           "After training, save the stages, reassemble the plain model with load_full_model on the last rank, "
           "and set val_accuracy from it (traced stages stay in training mode).")
    if last["state"] is None:
        raise CheckFailed(f"the script's checkpoint does not reassemble into the whole model "
                          f"({last['seen'].get('load_error', 'no model')})",
                          "Call save_stage(stage, args.checkpoint) on every rank after training; load_full_model "
                          "must read it back into a whole EuroSATNet.")
    return last


def _hint_for_weights(outs: list[dict], steps: int, k: int) -> str:
    """The likeliest mistake behind weights that left the reference's path, from what the ranks saw."""
    for r, out in enumerate(outs):
        seen = out["seen"]
        forwards = {s["forwards"] for s in seen["steps"]}
        if len(seen["steps"]) != steps:
            return (f"rank {r} ran {len(seen['steps'])} schedule steps with --max-steps {steps}: call train_step "
                    "once per batch and stop after --max-steps batches (the loop is given).")
        if forwards != {k}:
            return (f"with --microbatches {k}, rank {r}'s schedule ran {sorted(forwards)} microbatch(es) per step: "
                    "pass args.microbatches to make_schedule, and an example of batch_size // microbatches images to "
                    "build_stage.")
        if seen["optimizer_steps"] != steps:
            return (f"rank {r}'s optimizer stepped {seen['optimizer_steps']} time(s) for {steps} batches: step the "
                    "optimizer once per batch (train_step does it), not once per epoch.")
        if seen["optimizer_scope"] != ["stage"]:
            return (f"rank {r}'s optimizer does not hold exactly this rank's stage parameters "
                    f"({', '.join(seen['optimizer_scope'])}): Scope the optimizer to the local stage: "
                    "torch.optim.SGD(stage.submod.parameters(), ...). The other ranks own, and update, the other "
                    "blocks.")
    return ("Train as the reference does: SGD(stage.submod.parameters(), lr=args.lr, momentum=0.9), one "
            "train_step per batch, the stage built from the model the script created.")


def _compare(learner: dict, reference: dict, outs: list[dict], steps: int, k: int, round_: int) -> None:
    """The learner's run against the reference's on the same data: the same losses and the same trained weights."""
    err, where = worst_error(learner["state"], reference["state"])
    losses_ok = all(math.isclose(a, b, rel_tol=LOSS_RTOL, abs_tol=1e-6)
                    for a, b in zip(learner["losses"], reference["losses"]))
    if err <= STATE_RTOL and losses_ok:
        return
    what = (f"weights differ ({where!r}: relative error {err:.2g}, tolerance {STATE_RTOL:g})" if err > STATE_RTOL
            else f"losses differ ({[round(x, 4) for x in learner['losses']]} vs "
                 f"{[round(x, 4) for x in reference['losses']]})")
    when = "the untimed first run" if round_ < 0 else f"round {round_ + 1}"
    raise CheckFailed(f"{when}: after {steps} steps with {k} microbatches, the script's {what} from the "
                      "reference script's on the same secret data and --seed", _hint_for_weights(outs, steps, k))


def _timeline(m, job, trial, k: int) -> dict | None:
    """The picture: one GPipe and one 1F1B step on the learner's stages (recorded in its ranks: illustration only)."""
    ws, batch = m.world_size, int(trial.params["batch_size"])
    spec, state = secret_model(trial, 900, norm=True)
    x, y = images(trial, batch, 901), labels(trial, batch, 902)
    inputs = [{"model": {**spec, "state": state}, "example": x[: batch // k], "microbatches": k,
               "images": x if r == 0 else None, "labels": y if r == ws - 1 else None} for r in range(ws)]
    result = job.run("pipeline.timeline", inputs, group="harness", time_limit=min(m.time_limit, 120.0))
    if not result.complete or not all(isinstance(r, dict) and r for r in result.results()):
        return None
    try:
        return merge_timelines(result.results(), k)
    except (KeyError, TypeError, ValueError, IndexError):
        return None   # a picture the ranks could not describe: the verdict goes without it


def _first_runs(m, learner, reference, inputs: list) -> list:
    """The untimed first run of each job, side by side on the same inputs: [learner's TaskResult, reference's].

    The reference starts up while the learner's run goes on; a learner run that fails ends the
    wait at once (the reference's run is then abandoned: run_measured closes its job).
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    def reference_run():
        m.ready(reference)
        return m.run(reference, "pipeline.train", inputs, group="harness")

    pool = ThreadPoolExecutor(2)
    try:
        futures = [pool.submit(m.run, learner, "pipeline.train", inputs, group="harness")]
        if reference is not None:
            futures.append(pool.submit(reference_run))
        wait(futures, return_when=FIRST_EXCEPTION)
        return [f.result() for f in futures]   # the learner's failure first, whichever finished first
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _judged(mine, reference, steps: int, k: int, round_: int) -> None:
    """One learner run: the report's form, then (with a reference) the same losses and weights as the reference's."""
    from ...measured import ReferenceFailed

    theirs = reference.results()[-1] if reference is not None else None
    if theirs is not None and (theirs.get("state") is None or theirs.get("losses") is None):
        raise ReferenceFailed(f"the reference script's run reported no trained model ({theirs.get('seen')})")
    with read_carefully():
        last = _learner_run(mine, steps, k)
        if theirs is not None:
            _compare(last, theirs, mine.results(), steps, k, round_)


def _measure(m):
    trial = m.trial
    p, ws = trial.params, m.world_size
    k, steps = int(p["microbatches"]), int(p["steps"])
    judge_speed = bool(p.get("judge_speed", True))
    sources = m.reference_sources()
    learner = m.learner_job()
    reference = m.reference_job(sources, module=m.call.exercise.module) if sources else None
    m.ready(learner)
    # 1. Untimed, both jobs at once, the same data: the weights are compared, and the first call of everything
    #    (process group, imports, the tracer) is paid outside the timed rounds. At least 2 steps, so that an
    #    optimizer stepped once per epoch differs from once per batch.
    first = steps if not judge_speed else min(steps, 2)
    inputs = _run_inputs(trial, 50, ws, k, first, "first")
    results = _first_runs(m, learner, reference, inputs)
    _judged(results[0], results[1] if reference is not None else None, first, k, -1)
    checked = ("the trained weights and losses match the reference script's on secret data"
               if reference is not None else "self-check without a reference: losses, checkpoint and evaluation")
    if not judge_speed:
        return f"the script trained {ws} stages with {k} microbatches: {checked} (speed not judged in this variant)"

    # 2. Timed rounds, one side after the other in rotating order, new data and --seed each round; more rounds while
    #    the case is close.
    runs = {"baseline": (reference or learner, 1), "reference": (reference, k), "learner": (learner, k)}
    if reference is None:
        del runs["reference"]
    outs = {}
    ideal = round(ideal_speedup(ws, k), 2)

    def run(side: str, i: int) -> float:
        job, n_mb = runs[side]
        outs[side, i] = m.run(job, "pipeline.train", _run_inputs(trial, 1000 + 100 * i, ws, n_mb, steps,
                                                                 f"run-{i}-{side}"), group="harness")
        return outs[side, i].seconds

    def judge(i: int, _speed) -> None:
        _judged(outs["learner", i], outs.get(("reference", i)), steps, k, i)
        m.require_idle_learner()   # background work while the reference ran would slow its baseline

    seconds, speed = rounds.timed_rounds(
        list(runs), run, rounds=int(p["rounds"]), max_rounds=int(p["max_rounds"]), after_round=judge,
        decide=lambda seconds: rounds.speed_figure(seconds, ideal=ideal, thresholds=trial.thresholds))
    names = {"baseline": f"baseline ({'reference' if reference is not None else 'yours'}, 1 microbatch)",
             "reference": f"reference, {k}", "learner": f"yours, {k}"}
    speed.update(label=f"{ws} stages: {k} microbatches vs 1",
                 seconds={names[side]: [round(x, 3) for x in v] for side, v in seconds.items()})
    details = {"speedup": speed}
    picture = _timeline(m, learner, trial, k)
    if picture:
        details["timeline"] = {**picture, "speedup": {"measured": speed["measured"], "ideal": ideal},
                               "illustration": "recorded in your ranks after the timed runs; not evidence"}
    versus = (f"; reference {speed['reference']:.2f}x" if "reference" in speed else "; your own 1-microbatch runs as "
              "the baseline (no reference here)")
    figures = (f"{k} microbatches ran {speed['measured']:.2f}x faster than 1 microbatch (ideal p*m/(m+p-1) = "
               f"{ideal:.2f}x, pass line {speed['threshold']:.2f}x{versus}; rounds "
               f"{', '.join(f'{x:.2f}' for x in speed['ratios'])})")
    rounds.require_speed(speed, figures, correct=checked, runs=f"runs with {k} microbatches",
                         fail_message="the stages do not overlap enough",
                         fail_hint="Give each rank only its stage, pass the microbatch count to the schedule, and "
                                   "keep per-step work (printing, .item() on every rank, evaluation) out of the "
                                   "training loop. On a busy machine, run the check again.", details=details)
    bubble = "; ".join(f"{name} bubble {b['measured']:.0%} measured vs {b['formula']:.0%} formula"
                       for name, b in (picture or {}).get("bubble", {}).items())
    return f"{figures}; {checked}" + (f"; {bubble}" if bubble else ""), details


CHECK = Check(id="pipeline.train", functions=("main",), measure=_measure, measures_speed=True, explain=explain,
              thresholds=rounds.SpeedThresholds,
              unmeasured={"judge_speed": False},
              defaults={"microbatches": 4, "batch_size": 64, "steps": 5, "rounds": 3, "max_rounds": 7,
                        "judge_speed": True})
