"""run_check(): from an exercise id to a Verdict (read the file, draw the secret inputs, run the ranks, judge);
check() for notebook test cells.

The harness is the trusted side: it computes each call's inputs and expected values,
sends every rank only its own inputs, and judges what comes back. Exercises written in
the same module share one job when a VerdictCache is given (notebooks, grading).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks, config, machine, policy, public
from .checks import Check, Run, Trial
from .course import load_course
from .preflight import preflight
from .session import Job, TaskResult
from .verdict import CheckFailed, Verdict

LOG_TAIL = 4000
# torchrun's summary names the first rank that failed: "Root Cause ... rank : 1 (local_rank: 1) exitcode : 3"
ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(?P<rank>\d+).*?exitcode\s*:\s*(?P<code>-?\d+)", re.S)
PEER_FAILURE = re.compile(r"Connection closed by peer|Connection reset|Broken pipe|NCCL communicator was aborted"
                          r"|Socket Timeout|timed out|recvBytes|Read error", re.I)
SHARED_PARAMS = ("seed",)   # scenario parameters every exercise understands


# ------------------------------------------------------------------ failures every check shares

def _stuck_line(stack: str, module: str) -> str:
    """The learner's innermost line in a faulthandler stack, e.g. 'my.py line 7 in global_mean'."""
    for line in stack.splitlines():
        found = re.search(r'File "([^"]+)", line (\d+) in (\S+)', line)
        if found and module and Path(found[1]).name == Path(module).name:
            return f"{Path(found[1]).name} line {found[2]} in {found[3]}"
    return ""


def _readable_stack(text: str) -> str:
    """faulthandler prints innermost first; keep the main thread, without the driver's own frames."""
    threads = text.split("\n\n")
    main = next((t for t in threads if "autograder/rank/__main__.py" in t), threads[0])
    if "in receive" in main and "parts/" not in main:
        return "finished its part and was waiting for the harness (not in any collective)"
    own = ("autograder/rank/__main__.py", "autograder/rank/wire.py", "<frozen runpy>", "c10d_logger.py")
    return "\n".join(ln for ln in main.splitlines() if not any(h in ln for h in own))


def _explain_error(check: Check, error: dict) -> str:
    hint = check.explain(error)
    if hint:
        return hint
    text = f"{error['type']}: {error['message']}"
    if error["type"] == "MemoryError" or "can't allocate memory" in text:
        return ("The rank ran out of its memory limit: look for a tensor or list that grows without bound "
                "(e.g. keeping every batch's loss tensor with its graph).")
    if error["type"] == "NotImplementedError":
        return "A function you call still raises NotImplementedError: fill in its '# YOUR CODE HERE'."
    if "ProcessGroupNCCL" in text or "NCCL" in text and "GPU" in text:
        return "NCCL needs GPUs; on a CPU-only machine the backend must be gloo (choose it from the device)."
    if "Default process group has not been initialized" in text:
        return "A collective ran before init_process_group(); this exercise expects the process group to exist."
    if PEER_FAILURE.search(text):
        return "Another rank stopped or skipped a collective, so this rank's collective had no partner."
    return "Read the traceback in this rank's output below: the last line in your file is where it failed."


def failure_verdict(job: Job, result: TaskResult, check: Check, limit: float, base: dict) -> Verdict:
    """The verdict for a task that did not complete on every rank: raised, hung, died, flooded, tampered."""
    ws = job.world_size
    logs = {f"rank {r}": text for r, text in job.logs().items()}
    stacks = {f"rank {r}": _readable_stack(s) for r, s in job.stacks().items()} if result.timed_out else {}
    base = {**base, "logs": logs}
    if result.problem:
        return Verdict(passed=False, status="fail", message=result.problem,
                       hint="The rank driver's connection is for the harness alone; do not open the course's "
                            "socket from your code.", **base)
    flooded = job.flooded()
    if flooded:
        return Verdict(passed=False, status="fail",
                       message=f"rank(s) {', '.join(map(str, flooded))} printed more than the output limit "
                               f"({job.output_limit // 2**20} MiB) and were stopped",
                       hint="Print less: a print inside a loop floods the log. Print on rank 0, every N steps.",
                       **base)
    row = result.outcomes
    failed = [o for o in row if o is not None and not o.ok]
    if failed:
        # The first failure that is not just a peer noticing another rank's exit explains the most.
        primary = next((o for o in failed if not PEER_FAILURE.search(o.error["message"])), failed[0])
        err = primary.error
        where = f" at {err['where']}" if err.get("where") else ""
        phase = " while importing your module" if primary.phase == "import" else ""
        message = f"rank {primary.rank} raised {err['line']}{where}{phase}"
        if ws == 1 and check.local:
            message = f"your module raised {err['line']}{where}{phase}"
        key = f"rank {primary.rank}"
        logs[key] = (logs.get(key, "") + "\n" + err["traceback"]).strip()
        return Verdict(passed=False, status="fail", message=message, hint=_explain_error(check, err), **base)
    done = [r for r, o in enumerate(row) if o is not None]
    if result.timed_out and result.unread:
        return Verdict(passed=False, status="timeout", stacks=stacks,
                       message=f"time limit of {limit:.0f} s reached; rank(s) {', '.join(map(str, result.unread))} "
                               f"did not take their inputs from the harness in time",
                       hint="Each rank receives its own inputs from the course's connection, and the time runs from "
                            "the first byte sent: do not block or bypass that connection from your code.", **base)
    if result.timed_out:
        stuck = [r for r in range(ws) if r not in done]
        places = [f"rank {r}: {_stuck_line(job.stacks().get(r, ''), job.module or '') or 'see its stack'}"
                  for r in stuck]
        message = (f"time limit of {limit:.0f} s reached; rank(s) {', '.join(map(str, stuck)) or 'all'} never "
                   f"finished" + (f" while rank(s) {', '.join(map(str, done))} had" if done else "")
                   + (" (" + "; ".join(places) + ")" if places else ""))
        hint = ("A rank is waiting in a collective that another rank never called: every rank must make the "
                "same collective calls in the same order (no collective inside `if rank == ...`)."
                if done else "Every rank is stuck or too slow: look at where each one was when time ran out.")
        return Verdict(passed=False, status="timeout", message=message, hint=hint, stacks=stacks, **base)
    missing = [r for r in range(ws) if r not in done]
    agent = job.agent_log()
    logs["torchrun"] = agent[-LOG_TAIL:]
    root = ROOT_CAUSE.search(agent)
    if root and int(root["rank"]) in missing:
        message = (f"rank {root['rank']} ended without a result (exit code {root['code']}); "
                   f"torchrun then stopped the other ranks")
    else:
        message = f"rank(s) {', '.join(map(str, missing))} ended without a result"
    return Verdict(passed=False, status="error", message=message,
                   hint="The process died before finishing: look for os._exit/sys.exit, a crash, or output "
                        "beyond the size limit in the output below.", **base)


def judge_verdict(check: Check, trial: Trial, inputs: list, expected: Any, result: TaskResult, base: dict) -> Verdict:
    run = Run(exercise=trial.exercise, world_size=trial.world_size, params=trial.params,
              ranks=tuple(result.outcomes), thresholds=trial.thresholds, profile=trial.profile,
              inputs=inputs, expected=expected, seconds=result.seconds)
    try:
        summary = check.judge(run)
    except CheckFailed as failure:
        return Verdict(passed=False, status=failure.status, message=failure.message, hint=failure.hint,
                       details=failure.details, **base)
    details = {}
    if isinstance(summary, tuple):
        summary, details = summary
    return Verdict(passed=True, message=summary, details=details, **base)


# ------------------------------------------------------------------ the check

@dataclass(frozen=True)
class Call:
    """One exercise to run in a job: what the harness needs to make, run and judge its task."""
    exercise: config.Exercise
    check: Check
    params: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """One job: the learner's module, its world, and the exercises to run in it (first: the requested one)."""
    path: Path
    profile: config.Profile
    world_size: int
    nnodes: int
    calls: tuple[Call, ...]
    time_limit: float | None

    @property
    def local(self) -> bool:
        return self.calls[0].check.local

    def limit(self, call: Call) -> float:
        return float(self.time_limit or call.exercise.time_limit)


class VerdictCache:
    """Verdicts of exercises that shared a launch, keyed by everything that could change them.

    The key holds the content of every .py file next to the learner's module, so editing
    and re-running the %%writefile cell invalidates it.
    """

    def __init__(self):
        self._verdicts: dict[tuple, Verdict] = {}

    @staticmethod
    def key(exercise_id: str, path: Path, settings: tuple, params: dict) -> tuple:
        digest = hashlib.sha256()
        for f in sorted(path.parent.glob("*.py")):
            digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        return exercise_id, str(path), digest.hexdigest(), settings, json.dumps(params, sort_keys=True)

    def get(self, key: tuple) -> Verdict | None:
        return self._verdicts.get(key)

    def put(self, key: tuple, verdict: Verdict) -> None:
        self._verdicts[key] = verdict


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
    base = dict(exercise=exercise_id, profile=prof.name, world_size=0 if check.local else ws,
                max_points=exercise.points, hidden=hidden)

    problem = preflight(path, check.functions, check.by_hand)
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
                or preflight(path, c.functions, c.by_hand)):
            continue
        if c.group != "harness" and check.group == "harness":
            continue  # it must run before any process group exists
        params = {**c.defaults, **shared}
        if cache.get(VerdictCache.key(e.id, path, settings, params)) is None:
            found.append(Call(e, c, params))
    return found


class NoExpectedValues(Exception):
    """The student pack has no expected values for this call (only for the public variants)."""


def prepare(plan: Plan, call: Call) -> tuple[Trial, list, Any]:
    """(trial, every rank's inputs, the expected value): computed here, or in the student pack read from its data."""
    if public.student_copy():
        entry = public.lookup(call.exercise.id, plan.world_size, call.params, plan.nnodes)
        if entry is None:
            shipped = public.available(call.exercise.id)
            raise NoExpectedValues(f"this copy of the course has expected values for {call.exercise.id} only with "
                                   f"{'; '.join(shipped) or 'no variant'} (other variants are checked when your "
                                   f"notebook is graded)")
        trial = Trial(exercise=call.exercise.id, params=call.params, world_size=plan.world_size,
                      profile=plan.profile.name, thresholds=checks.thresholds_for(call.check, call.exercise,
                                                                                  plan.profile.name),
                      secret=entry["secret"], nnodes=plan.nnodes)
        return trial, entry["inputs"], entry["expected"]
    trial = trial_for(plan, call)
    inputs = call.check.inputs(trial)
    return trial, inputs, call.check.expected(trial, inputs) if call.check.expected else None


def trial_for(plan: Plan, call: Call) -> Trial:
    return Trial.fresh(exercise=call.exercise.id, params=call.params, world_size=plan.world_size,
                       profile=plan.profile.name,
                       thresholds=checks.thresholds_for(call.check, call.exercise, plan.profile.name), nnodes=plan.nnodes)


def _run(plan: Plan) -> list[Verdict | None]:
    """One job for the plan's exercises; a Verdict per exercise (None: the job stopped before it)."""
    verdicts: list[Verdict | None] = [None] * len(plan.calls)
    with machine.share(exclusive=False) as cpus, \
            Job(world_size=plan.world_size, profile=plan.profile, module=plan.path.name, sources=plan.path.parent,
                label=plan.calls[0].exercise.id, local=plan.local, nnodes=plan.nnodes, cpus=cpus) as job:
        job.launch()
        # The ranks start (torch's import takes seconds); meanwhile the inputs and expected values are made here.
        first = plan.calls[0]
        base = dict(exercise=first.exercise.id, profile=plan.profile.name, world_size=0 if plan.local else plan.world_size,
                    max_points=first.exercise.points)
        prepared = []
        for call in plan.calls:
            try:
                prepared.append(prepare(plan, call))
            except NoExpectedValues as exc:
                if call is first:
                    verdicts[0] = Verdict(passed=False, status="error", message=str(exc),
                                          hint="Run the self-check with its default parameters.", **base)
                    return verdicts
                break   # a companion without data: checked when it is asked for
        plan = Plan(plan.path, plan.profile, plan.world_size, plan.nnodes, plan.calls[:len(prepared)], plan.time_limit)
        failed = job.ready(plan.limit(first))
        if failed is None:   # the group and the rank parts, outside the first task: its seconds are its own
            failed = job.prepare(plan.limit(first), parts=sorted({c.check.rank_part for c in plan.calls}),
                                 group=not plan.local and first.check.group == "harness")
        if failed is not None:
            verdicts[0] = failure_verdict(job, failed, first.check, plan.limit(first), {**base, "seconds": round(failed.seconds, 2)})
            return verdicts
        for i, (call, (trial, inputs, expected)) in enumerate(zip(plan.calls, prepared)):
            result = job.run(call.check.rank_part, inputs, group=call.check.group, time_limit=plan.limit(call))
            base = dict(exercise=call.exercise.id, profile=plan.profile.name,
                        world_size=0 if plan.local else plan.world_size, max_points=call.exercise.points,
                        seconds=round(result.seconds, 2))
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
