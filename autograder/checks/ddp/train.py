"""ddp.train: ddp_train.py, the whole EuroSAT script under torchrun: it must train like the course's
reference DDP script, and faster on N ranks than one rank.

Scenario. Two jobs of N ranks: the learner's files, and the source notebook's ddp_parts.py and
ddp_train.py (the reference; a job the learner's code is not in). In each, the rank part calls
main(argv) like a torchrun launch (a fresh store on a port chosen here), on 1 rank (rank 0; the
others idle) or on all N ranks, with --synthetic: the images are drawn here for every round from
a fresh secret and sent to the ranks, which hand them to load_data in place of
eurosat.data.synthetic_tensors. Every round has its own data and its own --seed, so nothing
computed in an earlier call or round helps.

Rounds (rounds.timed_rounds): reference on 1 rank (the baseline), reference on N ranks, learner on
N ranks, in an order rotated each round, after one untimed warm-up run per job. Each run is timed
from outside (inputs sent -> last reply).

Correctness, every learner run: the checkpoint (bytes read by rank 0 right after main() returned,
loaded here with weights_only=True) must hold the reference's N-rank weights for the same round,
within 1e-3 absolute on every tensor. Identical code gives identical bits (gloo sums in a fixed
order, so 2 ranks always agree exactly); a correct variant (other bucket sizes, static graph,
gradient views) only reorders the 3-rank float32 sums: measured 6e-8 to 7e-7 after an epoch of
the script's AdamW (notebook 01's recipe; Adam's epsilon keeps a rounding difference in a
near-zero gradient far from a whole step). Wrong scripts land far away: each rank trained alone
4e-2 to 1.2e-1, every rank on all images 0.26 to 0.34 and other BatchNorm step counts (2 and 3
ranks, 250 images). The metrics JSON must report the validation accuracy and loss this
checkpoint's model really has on the round's validation images (evaluated here; 1e-6 and 1e-4
relative: the same numbers summed in another order). What the rank saw of the
training (images per rank, DDP forwards) only names a failure. While the reference runs, the
learner's job must stay idle (its CPU time read from /proc, measured.Measurement.run): background
work there would slow the baseline and flatter the learner's speed-up.

Speed (N > 1, repeats > 0): learner = median over rounds of t(reference, 1 rank) / t(learner, N);
pass line max(floor_efficiency x ideal, reference_share x the reference's own speed-up in the
same rounds) (rounds.speed_figure, thresholds in course.yaml; ideal = N, at most the cores on the
cpu profile). Inconclusive, never a fail, when even the reference stays under the floor, or when
the learner's N-rank runs kept pace_share of the reference's N-rank runs of the same rounds (the
1-rank baseline drifted: a busy machine). A close miss (one round reached the line) gets more
rounds, up to max_repeats (rounds.more_rounds). A script that is slow only on 1 rank gains nothing: its
1-rank runs are never timed. A round whose learner run is wrong ends the check (with the speed-up
so far). Student pack (no source notebook): the learner's own 1-rank runs are the baseline and the
floor is the line (a self-check), with the rank's observations standing in for the reference.
"""
from __future__ import annotations

import json
import math
import os

from ... import measured, rounds
from ...verdict import CheckFailed
from .. import Check
from . import (differing, is_state_dict, load_saved, max_difference, one_thread, reads_rank_results,
               strict_load_problem)
from .data import explain

TOLERANCE = 1e-3                     # weights, absolute (see the docstring)
ACCURACY_TOLERANCE, LOSS_RTOL = 1e-6, 1e-4
FULL = {"kind": "eurosat", "width": 16, "blocks": 3, "norm": True}   # the script's EuroSATNet()


# ------------------------------------------------------------------ the rounds' data (trusted side)

def _draw_round(trial_rng, n_images: int) -> dict:
    """One round's secret data: what load_data would get from synthetic_tensors, as exact uint8 images."""
    import torch

    from eurosat.data import synthetic_tensors

    seed = trial_rng.randrange(2**31)
    data = {"seed": seed}
    for name, n in (("train", n_images), ("val", max(n_images // 4, 16))):
        with one_thread():
            images, labels = synthetic_tensors(n, seed=trial_rng.randrange(2**32))
        data[name] = [(images * 255).round().to(torch.uint8), labels]   # k / 255 in float32 round-trips exactly
    return data


def _inputs(data: dict, world: int, ws: int, p: dict, tag: str) -> list:
    from ...launch import free_port

    argv = ["--epochs", p["epochs"], "--batch-size", p["batch_size"], "--synthetic", len(data["train"][1])]
    run = {**data, "world": world, "argv": argv, "port": free_port(), "tag": tag}
    return [run if r < world else {"world": world} for r in range(ws)]


def _evaluate(state: dict, data: dict) -> tuple[float, float]:
    """(accuracy, mean loss) of the checkpoint's model on the round's validation images, normalised as
    load_data does (the training images' per-channel mean and std)."""
    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model

    train, val = (data[k][0].float() / 255 for k in ("train", "val"))
    mean, std = train.mean(dim=(0, 2, 3), keepdim=True), train.std(dim=(0, 2, 3), keepdim=True)
    model = build_model({**FULL, "state": state}).eval()
    with torch.no_grad(), one_thread():
        logits = model((val - mean) / std)
    labels = data["val"][1]
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


# ------------------------------------------------------------------ correctness of one learner run

def _fail(message: str, hint: str, speed: dict | None) -> None:
    """Fail with the speed-up figure attached when there is one (the widget draws it whatever is wrong)."""
    raise CheckFailed(message, hint, {"speedup": speed} if speed else {})


def _diagnosis(outs: list[dict], ws: int, p: dict) -> tuple[str, str] | None:
    """What the ranks saw of the training, as (message, hint) of the likeliest mistake (observations: hints)."""
    n, share = p["images"], math.ceil(p["images"] / ws)
    for r, res in enumerate(outs):
        if not res["trained"]:
            return (f"rank {r}: main() never trained the EuroSATNet (no training-mode forward was seen)",
                    "Keep the given scaffolding: main(argv) builds EuroSATNet, wraps it, and trains it.")
        per_epoch = res["images"] / p["epochs"]
        if ws > 1 and per_epoch >= n:
            return (f"rank {r} trained on {per_epoch:.0f} images per epoch: every rank processed the whole dataset "
                    f"({n} images), so {ws} ranks did the work {ws} times",
                    "Build the training loader with make_train_loader(train_set, ...) (a DistributedSampler): "
                    f"each rank must train on its own share, about {n}/{ws} images per epoch.")
        if per_epoch != share:
            return (f"rank {r} trained on {per_epoch:.0f} images per epoch; expected its share, {share} of {n}",
                    "Use make_train_loader for the training data and call start_epoch every epoch.")
        if res["ddp_forwards"] == 0:
            return (f"rank {r}: the model was trained without DistributedDataParallel",
                    "Wrap the model with wrap_model(EuroSATNet(), device) and train the wrapper: otherwise "
                    "gradients are never averaged and the replicas drift apart.")
        if not res["changed"]:
            return (f"rank {r}: the model's weights did not change during training",
                    "Keep the optimizer over model.parameters() and the training loop of the scaffolding.")
    if len({res["final"] for res in outs}) > 1:
        return ("after training, the ranks' replicas differ",
                "Train the DDP wrapper that wrap_model returns, with one optimizer over its parameters.")
    return None


@reads_rank_results
def _judge_run(outs: list[dict], reference_state: dict | None, data: dict, ws: int, p: dict,
               speed: dict | None) -> float:
    """Fail unless this learner run trained like the reference and reported its model's metrics; the weight gap."""
    raw, state, problem = outs[0].get("checkpoint"), None, ""
    if raw is None:
        problem = "there is no checkpoint file after main() returned"
    else:
        state, error = load_saved(raw)
        problem = (error or ("" if is_state_dict(state) else f"it holds a {type(state).__name__}")
                   or strict_load_problem(state, FULL))
    gap = max_difference(state, reference_state) if reference_state is not None and not problem else 0.0
    if problem or gap > TOLERANCE:
        found = _diagnosis(outs, ws, p)
        if found:
            _fail(*found, speed)
        if problem:
            _fail(f"the checkpoint does not hold the trained weights in the plain model's format: {problem}",
                  "At DDP 6, after training, write the wrapped model to args.checkpoint with your save_checkpoint "
                  "(the ddp.checkpoint exercise).", speed)
        how = (f"by up to {gap:.2e} (tolerance {TOLERANCE:.0e})" if math.isfinite(gap) else
               f"(other shapes, keys or counters: {', '.join(differing(state, reference_state, TOLERANCE)[:3])})")
        _fail(f"after training on {ws} ranks the weights differ from the reference script's on the same images {how}",
              "Keep the scaffolding (seed, optimizer, epochs) and use the ddp_parts functions where the DDP "
              "comments ask for them: each rank's share, the wrapped model, start_epoch every epoch.", speed)
    if reference_state is None:   # student pack: the rank's observations are all there is
        found = _diagnosis(outs, ws, p)
        if found:
            _fail(*found, speed)
    actual = _evaluate(state, data)
    try:
        last = json.loads(outs[0]["metrics"])["epochs"][-1]
        got = (float(last["val_accuracy"]), float(last["val_loss"]))
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        _fail(f"rank 0's metrics JSON could not be read: {type(exc).__name__}: {exc}"[:300],
              "Keep the scaffolding that writes the metrics JSON on rank 0 at the end of main().", speed)
    if abs(got[0] - actual[0]) > ACCURACY_TOLERANCE or abs(got[1] - actual[1]) > LOSS_RTOL * max(1.0, actual[1]):
        _fail(f"the reported validation accuracy {got[0]:.4f} and loss {got[1]:.4f} are not the model's: on all "
              f"{len(data['val'][1])} validation images it has {actual[0]:.4f} and {actual[1]:.4f}",
              "Report reduce_metrics(correct, total, loss_sum) of the validation counts, so every rank's "
              "share of the validation set counts.", speed)
    return gap


# ------------------------------------------------------------------ the measurement


def ideal_speedup(ws: int, profile: str, cpus: set[int] | None) -> float:
    """N ranks can be at most N times as fast; on CPUs at most as many times as there are cores."""
    cores = len(cpus) if cpus else len(os.sched_getaffinity(0))
    return float(min(ws, cores) if profile == "cpu" else ws)


def sides(jobs: dict, ws: int, speed_wanted: bool) -> dict[str, tuple]:
    """The runs of a round, side -> (job, ranks): the learner on N ranks, the reference on N ranks (to compare the
    weights with, and to calibrate), and for the speed-up the baseline: the reference on 1 rank (the learner's own
    1-rank runs only in the student pack, where there is no reference)."""
    runs = {}
    if speed_wanted:
        runs["baseline"] = (jobs.get("reference", jobs["learner"]), 1)
    if "reference" in jobs:
        runs["reference"] = (jobs["reference"], ws)
    runs["learner"] = (jobs["learner"], ws)
    return runs


def _measure(m) -> tuple[str, dict]:
    p, ws = m.call.params, m.world_size
    speed_wanted = ws > 1 and p["repeats"] > 0
    sources = m.reference_sources()
    jobs = {"learner": m.learner_job()}
    if sources is not None:
        jobs["reference"] = m.reference_job(sources, module=m.call.exercise.module)
    # The ranks import torch meanwhile: the rounds' secret data are drawn now.
    rng = m.trial.rng
    data = [_draw_round(rng, p["images"]) for _ in range(p["repeats"] if speed_wanted else 1)]
    warmup = _draw_round(rng, p["warmup_images"]) if speed_wanted else None
    for job in jobs.values():
        m.ready(job)
        if warmup is not None:
            m.run(job, "ddp.train", _inputs(warmup, ws, ws, p, "warmup"))
    runs, results, gaps = sides(jobs, ws, speed_wanted), {}, []
    ideal = ideal_speedup(ws, m.trial.profile, m.cpus)
    label = f"{ws} ranks vs 1 (same {p['images'] * p['epochs']} images)"

    def run(side: str, i: int) -> float:
        if i == len(data):   # a close case's extra round
            data.append(_draw_round(rng, p["images"]))
        job, world = runs[side]
        done = m.run(job, "ddp.train", _inputs(data[i], world, ws, p, f"{side}{world}_{i}"))
        results[side, i] = done.results()
        return done.seconds

    def decide(seconds: dict) -> dict:
        return {**rounds.speed_figure(seconds, ideal=ideal, thresholds=m.trial.thresholds), "label": label}

    def judge(i: int, speed: dict | None) -> None:
        reference = results.get(("reference", i))
        reference_state = load_saved(reference[0]["checkpoint"])[0] if reference else None
        if reference is not None and not is_state_dict(reference_state):
            raise measured.ReferenceFailed("the reference script wrote no usable checkpoint")
        gaps.append(_judge_run(results["learner", i], reference_state, data[i], ws, p, speed))
        m.require_idle_learner({"speedup": speed} if speed else {})

    _, speed = rounds.timed_rounds(list(runs), run, rounds=len(data), decide=decide if speed_wanted else None,
                                   max_rounds=p["max_repeats"] if speed_wanted else 0, after_round=judge)
    what = (f"ddp_train.py on {ws} rank(s) trained like the reference script on {len(data)} secret data set(s) (weights "
            f"within {max(gaps):.1e}), checkpoint and metrics right" if sources is not None else
            f"ddp_train.py on {ws} rank(s): its shares, DDP, checkpoint and metrics looked right (self-check)")
    if speed is None:
        why = "speed-up needs 2 or more ranks" if ws == 1 else "speed-up not measured (repeats=0)"
        return f"{what}; {why}", {}
    line = (f"{speed['measured']:.2f}x as fast as 1 rank (rounds {', '.join(f'{x:.2f}x' for x in speed['ratios'])}; "
            f"pass line {speed['threshold']:.2f}x" + (f", reference {speed['reference']:.2f}x)" if "reference" in speed
                                                      else ", your own 1-rank runs as the baseline)"))
    rounds.require_speed(speed, line, correct=what, runs=f"{ws}-rank runs", fail_message=f"{ws} ranks were too slow",
                         fail_hint="Something makes the ranks wait for each other or repeat work: no dist.barrier() or "
                                   ".item() on every step, no rank-0-only work inside the loop, each rank trains its "
                                   "own share.", details={"speedup": speed})
    return f"{what}; {ws} ranks {line}", {"speedup": speed}


CHECK = Check(id="ddp.train", functions=("main", "parse_args", "load_data"), measure=_measure, measures_speed=True,
              thresholds=rounds.SpeedThresholds, unmeasured={"repeats": 0}, explain=explain,
              defaults={"images": 256, "epochs": 1, "batch_size": 32, "repeats": 3, "max_repeats": 7,
                        "warmup_images": 32})
