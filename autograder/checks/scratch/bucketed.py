"""scratch.bucketed: class BucketedDDP(nn.Module): __init__(module, bucket_cap_mb=25.0) broadcasts rank 0's
parameters and buffers, buckets the parameters in gradient-ready order (reverse registration, a bucket
closed before it would exceed the cap, in MiB), and registers a post-accumulate-grad hook per parameter
that launches a bucket's all-reduce (async_op=True, one flat buffer) as soon as its last gradient is
ready; forward delegates; finish_gradient_sync() launches what is left, waits, averages, copies back.

Correctness (the learner's job): three scenarios of three SGD steps, each rank with its own secret
initial weights and buffer (rank 0's are the truth) and its own batches: a cap below every
parameter, a cap above the whole model, and buckets of a few parameters with a layer the loss never
uses. After BucketedDDP(...) every rank must hold rank 0's values exactly; after every
finish_gradient_sync() each .grad must be the mean of the ranks' gradients (1e-4 relative, see
checks/scratch), the unused layer's .grad None; the final weights those of single-process training
(reference.train_data_parallel).

Overlap, measured from outside (2+ ranks). The same training steps of EuroSATNet (no BatchNorm,
bucket_cap_mb 0.05: six buckets) run in four ways: the reference's allreduce_gradients (naive), the
reference's BucketedDDP, the reference's BucketedDDP with its all-reduces launched only when
finish_gradient_sync first waits (the same buckets, asynchronous, but no overlap with backward), and
the learner's BucketedDDP.
Each job runs in its own network namespace whose loopback is shaped with tc tbf (a rate limit,
course.yaml `loopback_mbit`, with an Ethernet MTU and a burst of two packets): every all-reduced byte
costs time, as on a real link, so hiding communication behind the backward shows, and sending in the
backward's pauses earns no credit (a large burst let synchronous hooks pass for overlap). Rounds run
the four sides in rotated order (rounds.timed_rounds); the harness times every task. Per round each side's speed-up over naive;
medians over the rounds. The reference with and without overlap brackets what overlap buys on this
machine now: pass line = no-overlap + overlap_share x (reference - no-overlap) (course.yaml), so
that the fewer, larger collectives of buckets alone do not pass; INCONCLUSIVE (neither a pass nor a
fail) when that gap is under min_gain, or when the reference beat its twin in fewer than 3 of 4
rounds (a machine too busy for the measurement: single steps vary by +-30% under a load of 10 on 2
cores). A BucketedDDP that launches its buckets only after backward, all-reduces
synchronously in its hooks, or fills its buckets in registration order (bucket 0 is then ready
last, and buckets launch in order) lands near the no-overlap twin and fails, with a hint chosen
from what rank 0 recorded of its all-reduces (an observation, never evidence; it also draws the
per-bucket timeline of the picture).

The loopback is shaped as root by tc inside bwrap's network namespace, and without root inside a network
namespace that the job's own user namespace owns (unshare around bwrap: sandbox.py). Where neither works (no
bubblewrap sandbox, a container without user namespaces) the overlap is not measured: the verdict says so,
names why, and rests on correctness.
On the gpu profile NCCL does not use the loopback: the same measurement runs unshaped on a larger
model (NCCL's all-reduce runs on its own stream, so the overlap shows when communication and the
backward take comparable time); a gap under min_gain makes it inconclusive. In the student pack
(no reference) the no-overlap twin is the learner's own BucketedDDP and the line is that + min_gain.
"""
from __future__ import annotations

import statistics

from ... import rounds
from ...config import ConfigError
from ...verdict import CheckFailed, Inconclusive
from .. import Check, Run
from ..replies import reads_rank_results
from . import _dp, bucket_plan

# The measured training step, per profile. On 2 CPU cores a step of EuroSATNet (width 16, 64x64 images,
# batches of 16) computes in ~65 ms (up to ~0.3 s on slower cores), most of its backward in the first blocks
# (large maps, few parameters), after the last blocks' large gradients are ready: the window to hide them in.
# The ~620 KB a rank sends per step cross one loopback shaped to 30 Mbit/s (course.yaml) in ~0.17 s: at
# 15 Mbit/s communication so outweighed a fast core's backward that overlap hid only 4-5% of the step.
SPEED = {"cpu": {"width": 16, "image": 64, "batch": 16, "cap_mb": 0.05, "steps": 2, "rounds": 8},
         "gpu": {"width": 64, "image": 64, "batch": 64, "cap_mb": 1.0, "steps": 4, "rounds": 8}}


def _inputs(trial) -> list:
    return _dp.inputs(trial, "bucketed")


@reads_rank_results
def _judge(run: Run) -> str:
    return _dp.judge(run, "bucketed")


# ------------------------------------------------------------------ how the overlap can be measured here

def _setting(m) -> tuple[dict | None, str]:
    """(how to measure, "") or (None, why the overlap is not measured here)."""
    from ... import sandbox

    params, profile = m.trial.params, m.plan.profile.name
    if not params.get("speed", True):
        return None, "overlap not measured in this call (speed=False)"
    if m.world_size < 2:
        return None, "overlap not measured: one rank has nothing to communicate"
    setting = dict(SPEED.get(profile, SPEED["cpu"]))
    if m.plan.profile.backend == "nccl":
        return {**setting, "confine": None, "network": "NCCL, unshaped"}, ""
    if not sandbox.enabled():
        return None, ("overlap NOT MEASURED here: the loopback is shaped inside the job's own network namespace, "
                      "which needs the bubblewrap sandbox (`make setup`)")
    if why := sandbox.shaping_problem():
        return None, (f"overlap NOT MEASURED here: the job's loopback cannot be shaped ({why}); it is measured "
                      "when the course is graded, or run this check on a Linux host that lets users make namespaces")
    rate = m.trial.thresholds.loopback_mbit
    if rate is None:
        raise ConfigError(f"course.yaml: exercise 'scratch.bucketed', thresholds.{m.trial.profile}: loopback_mbit is "
                          "needed where the loopback is shaped (gloo)")
    # A link, not a token bucket: tbf lets a transfer that follows a quiet moment pass for free up to its burst,
    # which would reward all-reduces sent in pauses of the backward even when they block it (synchronous hooks
    # measured as fast as overlap with a 70 KB burst). A burst of a few packets holds no such credit, and tbf
    # drops any packet larger than its burst, so lo gets an Ethernet MTU (tbf splits GSO packets to it).
    shape = f"rate {rate:g}mbit burst 4kb latency 200ms"
    confine = sandbox.Sandbox(shape_loopback=shape, loopback_mtu=1500)
    return {**setting, "confine": confine, "network": f"loopback shaped to {rate:g} Mbit/s"}, ""


def _speed_inputs(trial, setting: dict) -> list:
    import torch

    from ...rank.toolkit import build_model, state_of

    spec = {"kind": "eurosat", "width": setting["width"], "blocks": 3, "norm": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(trial.generator(900).initial_seed())
        state = state_of(build_model(spec))
    out = []
    for r in range(trial.world_size):
        g = trial.generator(910 + r)
        x = torch.randn(setting["batch"], 3, setting["image"], setting["image"], generator=g)
        out.append({"model": {**spec, "state": state}, "cap_mb": setting["cap_mb"], "x": x,
                    "y": torch.randint(0, 10, (setting["batch"],), generator=g)})
    return out


# ------------------------------------------------------------------ pictures and hints (from in-rank records)

def _events(record: dict | None, per_call_rows: bool) -> list:
    if not record:
        return []
    marks, calls = record["marks"], record["calls"]
    start, backward, end = 0.0, marks.get("backward", [0.0])[0], marks.get("backward_end", [0.0])[0]
    events = [["compute", "forward", start, backward], ["compute", "backward", backward, end]]
    for i, c in enumerate(calls):
        done = c["end"] if c["end"] is not None else marks.get("synced", [c["start"]])[0]
        events.append([f"bucket {i}" if per_call_rows else "all-reduces", "all-reduce", c["start"], done])
    return events


def _hint(record: dict | None, sizes: list, cap_mb: float) -> str:
    if not record or not record["calls"]:
        return ("No dist.all_reduce was seen in the step: launch one all-reduce per bucket with "
                "dist.all_reduce(flat, async_op=True) from the hooks.")
    calls, backward_end = record["calls"], record["marks"]["backward_end"][0]
    if not any(c["async"] for c in calls):
        return ("Your hooks all-reduce synchronously (async_op=False): backward stops at every bucket until its "
                "all-reduce is done, so nothing overlaps. Launch with dist.all_reduce(flat, async_op=True), keep the "
                "handle, and wait for it in finish_gradient_sync().")
    numels = [c["numel"] for c in calls]
    reverse = [sum(dict(sizes)[n] for n in b) for b in bucket_plan(sizes, cap_mb)]
    forward = [sum(dict(sizes)[n] for n in b) for b in bucket_plan(sizes, cap_mb, reverse=False)]
    if numels == forward and forward != reverse:
        return ("Your buckets follow the registration order: bucket 0 holds the first layers, whose gradients are "
                "ready last, and since buckets launch in order nothing can start before the end of backward. Fill "
                "the buckets in reverse registration order (the order backward produces the gradients).")
    if all(c["start"] >= backward_end for c in calls):
        return ("Every all-reduce started only after backward had finished (in finish_gradient_sync): there is "
                "no overlap. Launch each bucket from the hook of its last gradient, during backward.")
    return ("Your buckets' all-reduces overlapped the backward too little: launch each bucket as soon as its "
            "last gradient is ready (not later), with async_op=True, and wait only in finish_gradient_sync().")


# ------------------------------------------------------------------ the measurement

def _correctness(m, learner) -> str:
    from ... import planning

    try:
        trial, inputs, expected = planning.prepare(m.plan, m.call)
    except planning.NoExpectedValues as exc:
        failure = CheckFailed(str(exc), "Run the self-check with its default parameters.")
        failure.status = "error"
        raise failure from None
    result = m.run(learner, "scratch.bucketed", inputs, group="harness")
    run = Run.of(trial, inputs, expected, result)
    return _judge(run)


def _measure(m):
    setting, why = _setting(m)
    ws = m.world_size
    learner = m.learner_job(confine=setting["confine"] if setting else None)
    sources = m.reference_sources() if setting else None
    reference = (m.reference_job(sources, confine=setting["confine"], module=m.call.exercise.module)
                 if sources else None)
    m.ready(learner)
    summary = _correctness(m, learner)
    if setting is None:
        return f"{summary}; {why}", {}

    speed_inputs = _speed_inputs(m.trial, setting)
    steps, n_rounds = setting["steps"], int(m.trial.params.get("rounds", setting["rounds"]))
    if reference:
        m.ready(reference)
    base = reference or learner          # student pack: the learner's own code is the baseline
    for job in {id(j): j for j in (learner, base)}.values():
        m.run(job, "scratch.overlap_prepare", speed_inputs, group="harness")
    who = "reference" if reference else "yours"
    sides = {"naive": (base, "naive"), "no overlap": (base, "deferred"), "yours": (learner, "bucketed")}
    if reference:
        sides["reference"] = (reference, "bucketed")
    names = {"naive": f"naive ({who})", "no overlap": f"bucketed, launched after backward ({who})",
             "reference": "bucketed (reference)", "yours": "bucketed (yours)"}
    records = {}
    for side, (job, kind) in sides.items():   # warm-up, and one step recorded inside rank 0 for the picture
        done = m.run(job, "scratch.overlap_steps", [{"kind": kind, "steps": 2, "record": True}] * ws, group="harness")
        records[side] = done.outcomes[0].result.get("record")
    sent = {side: [] for side in sides}   # loopback bytes per step, read from outside (the job's own namespace)

    def run(side: str, _round: int) -> float:
        job, kind = sides[side]
        before = job.loopback_bytes()
        done = m.run(job, "scratch.overlap_steps", [{"kind": kind, "steps": steps}] * ws, group="harness")
        after = job.loopback_bytes()
        if before is not None and after is not None:
            sent[side].append((after - before) / steps)
        return done.seconds / steps

    times, _ = rounds.timed_rounds(list(sides), run, rounds=n_rounds)
    m.require_idle_learner()   # background work while the reference's sides ran would slow them
    t = m.trial.thresholds
    decision = rounds.overlap_figure(times, min_gain=t.min_gain, share=t.overlap_share)
    sp, ms = decision["speedups"], {side: statistics.median(v) for side, v in times.items()}
    shown = ("naive", "reference", "yours") if reference else ("naive", "no overlap", "yours")
    details = {"overlap": {
        "timelines": {names[side]: _events(records[side], side != "naive") for side in shown},
        "seconds": {names[side]: round(ms[side], 4) for side in shown},
        "speedup": {"yours": sp["yours"], "reference": sp.get("reference", sp["yours"]),
                    "no_overlap": sp["no overlap"], "threshold": decision["threshold"]},
        "note": f"{setting['network']}; timelines recorded inside rank 0 (an illustration); speed-ups timed by "
                f"the harness", "times": {names[k]: [round(x, 4) for x in v] for k, v in times.items()},
        "ratios": decision["ratios"]}}
    _require_gradient_bytes(sent, details)
    figures = (f"bucketed {1000 * ms['yours']:.0f} ms per step vs naive {1000 * ms['naive']:.0f} ms: {sp['yours']:.2f}x"
               + (f"; the reference {sp['reference']:.2f}x" if reference else "")
               + f", its buckets launched after backward {sp['no overlap']:.2f}x; pass line "
               f"{decision['threshold']:.2f}x ({setting['network']}, median of {n_rounds} rounds)")
    if decision["decision"] == "pass":
        return f"{summary}; overlap measured: {figures}", details
    if decision["decision"] == "inconclusive":
        why = (f"the course's own buckets gained {decision['gap']:+.2f}x from overlap (needed: "
               f"{t.min_gain}) and beat their no-overlap twin in {decision['reference_wins']:.0%} of the "
               "rounds (needed: 75%)" if decision["why"] == "no clear gain" else
               f"yours missed the line, yet the reference was faster than yours in only "
               f"{decision['reference_ahead']:.0%} of the rounds (a fail needs 75%)")
        raise Inconclusive(f"correct, but the overlap could not be judged here now: {why}; {figures}",
                           "Re-run the check when the machine is quieter (close other programs).", details)
    raise CheckFailed(f"BucketedDDP is correct, but its communication does not overlap the backward: {figures}",
                      _hint(records.get("yours"), _eurosat_sizes(setting), setting["cap_mb"]), details)


def _require_gradient_bytes(sent: dict[str, list[float]], details: dict) -> None:
    """The gradients must cross the measured channel: the learner's steps send at least half the loopback bytes
    that the course's own buckets send (a ratio in one run; TCP headers and the MTU cancel). Ranks that trade
    gradients through files or memory of their own would be timed on a link their data never used."""
    if not sent.get("yours") or not sent.get("reference"):
        return   # no reference (student pack) or counters not readable (NCCL moves GPU memory, not loopback bytes)
    yours, reference = statistics.median(sent["yours"]), statistics.median(sent["reference"])
    details["overlap"]["bytes_per_step"] = {"yours": round(yours), "reference": round(reference)}
    if reference > 0 and yours < 0.5 * reference:
        raise CheckFailed(
            f"BucketedDDP gives the right gradients, but its steps sent {yours / 2**10:,.0f} KiB over the job's "
            f"network where the course's all-reduces send {reference / 2**10:,.0f} KiB ({yours / reference:.0%}): "
            "the gradients travelled some other way (files, shared memory), not through the process group",
            "Average the gradients with dist.all_reduce on the process group, from the hooks: the exercise is "
            "overlapping that communication with backward, and it is the communication that is timed.", details)


def _eurosat_sizes(setting: dict) -> list[tuple[str, int]]:
    from ...rank.toolkit import build_model

    model = build_model({"kind": "eurosat", "width": setting["width"], "blocks": 3, "norm": False})
    return [(n, p.numel()) for n, p in model.named_parameters()]


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "register_post_accumulate_grad_hook" in text or "hook" in text and "argument" in text:
        return ("register_post_accumulate_grad_hook(fn) calls fn(param) once the gradient has been added to "
                "param.grad: fn takes the parameter as its only argument.")
    if "NoneType" in text and "grad" in text:
        return ("A parameter the loss does not use has .grad None: use a zero stand-in in its bucket's flat buffer "
                "and leave its .grad None.")
    return None


CHECK = Check(id="scratch.bucketed", functions=("BucketedDDP",), inputs=_inputs, expected=_dp.expected, judge=_judge,
              measure=_measure, measures_speed=True, explain=_explain, defaults={"steps": 3},
              unmeasured={"speed": False}, by_hand=True, thresholds=rounds.OverlapThresholds)
