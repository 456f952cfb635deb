"""run_check(): from an exercise id to a Verdict (read the file, draw the secret inputs, run the ranks, judge);
check() for notebook test cells. The flow runs one way: preflight.py reads the file, planning.py makes each call's
inputs and expected values, a session.Job runs them (measured.py for speed and memory checks), diagnosis.py turns
the result into a verdict.

The harness is the trusted side: it computes each call's inputs and expected values,
sends every rank only its own inputs, and judges what comes back. Exercises written in
the same module share one job when a VerdictCache is given (notebooks, grading).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checks, config, machine, policy
from .checks import Check
from .course import load_course
from .diagnosis import failure_verdict, judge_verdict
from .planning import Call, NoExpectedValues, Plan, VerdictCache, prepare
from .preflight import preflight
from .session import Job
from .verdict import Verdict

SHARED_PARAMS = ("seed",)   # scenario parameters every exercise understands


# ------------------------------------------------------------------ the check

NOTEBOOK_CACHE = VerdictCache()  # used by check() and the self-check widget: one kernel, one cache


def run_check(exercise_id: str, *, module: str | Path | None = None, world_size: int | None = None,
              profile: str | None = None, time_limit: float | None = None, nnodes: int = 1,
              cwd: str | Path | None = None, cache: VerdictCache | None = None, hidden: bool = False,
              **params: Any) -> Verdict:
    """Run one exercise's check and return its Verdict (never raises for the learner's mistakes).

    With a cache, the other exercises written in the same module (same assignment, same
    world) run in the same job and their verdicts are cached: grading a notebook costs
    about one launch per distinct (module, world size).
    """
    course = load_course()
    exercise = course.exercise(exercise_id)
    check = checks.get(exercise_id)
    prof = policy.choose_profile(course, profile)
    path = (Path(cwd or Path.cwd()) / (module or exercise.module)).resolve()
    params = {**check.defaults, **params}
    ws = 1 if check.local else int(world_size or exercise.world_size or policy.ranks_for(prof))
    prof = policy.profile_for_ranks(course, prof, ws)
    base = dict(exercise=exercise_id, profile=prof.name, world_size=0 if check.local else ws,
                max_points=exercise.points, hidden=hidden)

    problem = preflight(path, check.functions, check.by_hand, check.avoid)
    if problem:
        status, message, hint = problem
        return Verdict(passed=False, status=status, message=message, hint=hint, **base)
    if ws < 1 or nnodes < 1 or ws % nnodes:
        return Verdict(passed=False, status="error", message=f"cannot split {ws} ranks over {nnodes} nodes",
                       hint="Use a world size that divides by the number of nodes.", **base)

    settings = (prof.name, ws, nnodes, time_limit)
    key = VerdictCache.key(exercise_id, path, settings, params)
    if cache is not None and (hit := cache.get(key)):
        return _as(hit, hidden)
    calls = [Call(exercise, check, params)]
    if cache is not None and check.measure is None:
        shared = {k: v for k, v in params.items() if k in SHARED_PARAMS}
        calls += _companions(course, exercise, check, path, settings, cache, shared)
    plan = Plan(path, prof, ws, nnodes, tuple(calls), time_limit)
    if check.measure is not None:
        from .measured import run_measured

        verdicts = [run_measured(plan, calls[0], base)]
    else:
        verdicts = _run(plan)
    if cache is not None:
        for call, v in zip(calls, verdicts):
            if v is not None and v.status in ("pass", "fail", "timeout"):
                cache.put(VerdictCache.key(call.exercise.id, path, settings, call.params), v)
    return _as(verdicts[0], hidden)


def _as(verdict: Verdict, hidden: bool) -> Verdict:
    if verdict.hidden == hidden:
        return verdict
    return Verdict.from_dict({**verdict.__dict__, "hidden": hidden})


def _companions(course, exercise, check: Check, path: Path, settings: tuple, cache: VerdictCache,
                shared: dict[str, Any]) -> list[Call]:
    """Other exercises of the same assignment and module that can run after this one in the same ranks.

    They run with their default parameters plus the requested call's shared ones (the seed),
    so a hidden test `check(id, world_size=3, seed=4)` for each exercise costs one launch.
    """
    found = []
    for e in course.assignment(exercise.assignment).exercises:
        c = checks.get(e.id)
        if (e.id == exercise.id or e.module != exercise.module or c.measure is not None or c.local != check.local
                or preflight(path, c.functions, c.by_hand, c.avoid)):
            continue
        if c.group != "harness" and check.group == "harness":
            continue  # it must run before any process group exists
        if e.world_size and e.world_size != settings[1]:
            continue  # it runs at its own world size (tp.two_d's 2 x 2 mesh)
        params = {**c.defaults, **shared}
        if cache.get(VerdictCache.key(e.id, path, settings, params)) is None:
            found.append(Call(e, c, params))
    return found


def _run(plan: Plan) -> list[Verdict | None]:
    """One job for the plan's exercises; a Verdict per exercise (None: the job stopped before it)."""
    verdicts: list[Verdict | None] = [None] * len(plan.calls)
    with machine.share(exclusive=False) as cpus, \
            Job(world_size=plan.world_size, profile=plan.profile, module=plan.path.name, sources=plan.path.parent,
                label=plan.calls[0].exercise.id, local=plan.local, nnodes=plan.nnodes, cpus=cpus) as job:
        job.launch()
        # The ranks start (torch's import takes seconds); meanwhile the inputs and expected values are made here.
        first = plan.calls[0]
        base = plan.base(first)
        prepared = []
        for call in plan.calls:
            try:
                prepared.append(prepare(plan, call))
            except (NoExpectedValues, ValueError) as exc:   # no data in the pack; a scenario this world cannot run
                if call is first:
                    hint = ("Run the self-check with its default parameters." if isinstance(exc, NoExpectedValues)
                            else "Use a world size and parameters the scenario can be split over.")
                    verdicts[0] = Verdict(passed=False, status="error", message=str(exc), hint=hint, **base)
                    return verdicts
                break   # a companion that cannot run here: checked when it is asked for
        plan = Plan(plan.path, plan.profile, plan.world_size, plan.nnodes, plan.calls[:len(prepared)], plan.time_limit)
        failed = job.ready(plan.limit(first))
        if failed is None:   # the group and the rank parts, outside the first task: its seconds are its own
            failed = job.prepare(plan.limit(first), parts=sorted({c.check.rank_part for c in plan.calls}),
                                 group=not plan.local and first.check.group == "harness")
        if failed is not None:
            # Nothing ran yet: what failed (the start-up, the module's import, the group) is every call's start-up
            # too, so each gets the verdict now instead of a launch of its own that fails the same way (a module
            # that loops at import cost one time-out per exercise). A time-out counts only for calls whose limit
            # it reached.
            for i, call in enumerate(plan.calls):
                if call is first or not failed.timed_out or plan.limit(call) <= plan.limit(first):
                    verdicts[i] = failure_verdict(job, failed, call.check, plan.limit(call),
                                                  plan.base(call, seconds=round(failed.seconds, 2)))
            return verdicts
        for i, (call, (trial, inputs, expected)) in enumerate(zip(plan.calls, prepared)):
            result = job.run(call.check.rank_part, inputs, group=call.check.group, time_limit=plan.limit(call))
            base = plan.base(call, seconds=round(result.seconds, 2))
            if not result.complete:
                verdicts[i] = failure_verdict(job, result, call.check, plan.limit(call), base)
                break   # the ranks are in an unknown state: the remaining exercises are not run
            verdicts[i] = judge_verdict(call.check, trial, inputs, expected, result,
                                        {**base, "logs": {f"rank {r}": t for r, t in job.logs().items()}})
    return verdicts


def check(exercise_id: str, **overrides: Any) -> None:
    """Notebook/test entry: print one success line, or raise AssertionError with the message and hint.

    While `course grade` runs the notebook, the cell shows the verdict the trusted
    re-verification established for this call (trusted.py); the kernel checks nothing itself.
    """
    from . import trusted

    if trusted.grading():
        verdict, note = trusted.trusted_verdict(exercise_id, overrides, Path(overrides.get("cwd") or Path.cwd()))
        if verdict is None:
            raise AssertionError(note)
        if note:
            print(note)
    else:
        if config.smoke():   # the test suite's run of every notebook: correctness here, speed in the grading tests
            overrides = {**checks.get(exercise_id).unmeasured, **overrides}
        cache = NOTEBOOK_CACHE if config.grading_shortcuts() else None
        try:
            verdict = run_check(exercise_id, cache=cache, **overrides)
        except config.ConfigError as exc:
            raise AssertionError(f"course configuration problem: {exc}") from None
    if not verdict.passed:
        raise AssertionError("\n" + verdict.to_text())
    print(verdict.headline)
