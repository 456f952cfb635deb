"""What the speed and memory checks work with: the learner's job and the reference's job side by side
(`Measurement`), their runs timed from outside, and the verdict whatever happens (`run_measured`).
The rounds and the decisions on their times are in rounds.py.

Why a reference job: the learner's code cannot be its own baseline (a script can slow its
1-rank runs down), and a fixed pass line fails honest students on a busy laptop. So the
reference solution (the source notebook's own file, run in a process the learner's code is
not in) gives the baseline and shows what this machine can reach right now.

While another job runs, the learner's job has nothing to do: Measurement.run reads its CPU time
from /proc around every such run, and a learner job that worked in the background (a thread that
spins while main() is not running slows the reference's timed runs, the baseline most of all, and
flatters the learner's figure) fails the check (Measurement.require_idle_learner).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import machine
from .outcome import TaskResult
from .session import Job
from .verdict import CheckFailed, Inconclusive, Verdict


class JobFailed(Exception):
    """The learner's job did not complete a task: the harness turns it into the usual failure verdict."""

    def __init__(self, job: Job, result: TaskResult, limit: float):
        super().__init__(result.part)
        self.job, self.result, self.limit = job, result, limit


class ReferenceFailed(RuntimeError):
    """The course's own reference failed here: an environment problem, not the learner's."""


IDLE_SHARE = 0.15   # of one core: more, while the learner's job has nothing to do, is background work


@dataclass
class Measurement:
    """The context a measuring check's `measure(m)` works in."""
    plan: Any       # planning.Plan
    call: Any       # planning.Call
    trial: Any      # checks.Trial
    cpus: set[int] | None = None
    jobs: list = field(default_factory=list)   # every job started, closed by run_measured whatever happens
    idle: list = field(default_factory=lambda: [0.0, 0.0])   # while other jobs ran: wall s, the learner's CPU s
    busy: set = field(default_factory=set)     # ids of the jobs running a task now (checks may run two at once)

    @property
    def time_limit(self) -> float:
        return self.plan.limit(self.call)

    @property
    def world_size(self) -> int:
        return self.plan.world_size

    def reference_sources(self) -> dict[str, str] | None:
        """The source notebook's %%writefile files for this exercise's assignment (None in the student pack)."""
        from .cells import notebook_files

        return notebook_files("source", self.call.exercise.assignment)

    def learner_job(self, world_size: int | None = None, *, confine=None, env: dict[str, str] | None = None) -> Job:
        """The learner's files in a job of their own (`confine`: a sandbox.Sandbox, e.g. a shaped loopback;
        `env`: more environment variables for its processes, e.g. allocator settings)."""
        return self._job(self.plan.path.parent, world_size, "learner", confine, env=env)

    def reference_job(self, sources: dict[str, str], world_size: int | None = None, *, module: str | None = None,
                      confine=None, env: dict[str, str] | None = None) -> Job:
        """The reference's files (a dict name -> text) in a job the learner's code is not in."""
        return self._job(sources, world_size, "reference", confine, module, env)

    def _job(self, sources: Path | dict, world_size: int | None, role: str, confine=None,
             module: str | None = None, env: dict[str, str] | None = None) -> Job:
        job = Job(world_size=world_size or self.world_size, profile=self.plan.profile,
                  module=module or self.plan.path.name, sources=sources, label=f"{self.call.exercise.id}-{role}",
                  cpus=self.cpus, confine=confine, env=env)
        job.role = role
        self.jobs.append(job)
        job.launch()
        return job

    def close(self, job: Job) -> None:
        """Stop a job before the measurement ends (its processes and their memory go now)."""
        if job in self.jobs:
            self.jobs.remove(job)
        job.close()

    def ready(self, job: Job) -> None:
        failed = job.ready(self.time_limit)
        if failed is not None:
            self._failed(job, failed)

    def run(self, job: Job, part: str, inputs: list, *, group: str = "none", measure_memory: bool = False,
            time_limit: float | None = None) -> TaskResult:
        idle = [j for j in self.jobs if getattr(j, "role", "") == "learner" and id(j) not in self.busy | {id(job)}]
        before = sum(cpu_seconds(j) for j in idle)
        self.busy.add(id(job))
        try:
            result = job.run(part, inputs, group=group, time_limit=time_limit or self.time_limit,
                             measure_memory=measure_memory)
        finally:
            self.busy.discard(id(job))
        if idle:   # the learner's job had nothing to do meanwhile: did it stay idle?
            self.idle[0] += result.seconds
            self.idle[1] += sum(cpu_seconds(j) for j in idle) - before
        if not result.complete:
            self._failed(job, result)
        return result

    def require_idle_learner(self, details: dict | None = None) -> None:
        """CheckFailed when the learner's job used more than IDLE_SHARE of a core while other jobs ran."""
        wall, cpu = self.idle
        if wall > 0 and cpu > IDLE_SHARE * wall:
            raise CheckFailed(f"while the reference ran ({wall:.1f} s), your job, which had nothing to do, used "
                              f"{cpu:.1f} s of CPU", "Something in your files keeps working in the background (a "
                              "thread or process started at import, or left running after main() returns). It slows "
                              "down whatever runs beside it, the timed comparison runs included: start nothing at "
                              "import, stop what main() starts before it returns.", details or {})

    def _failed(self, job: Job, result: TaskResult):
        if getattr(job, "role", "") == "reference":
            errors = [o.error["line"] for o in result.outcomes if o is not None and o.error]
            raise ReferenceFailed(f"the course's reference failed here ({result.problem or result.part}: "
                                  f"{errors[0] if errors else 'timed out or died'}); its output: {job.logs()}")
        raise JobFailed(job, result, self.time_limit)


def run_measured(plan, call, base: dict) -> Verdict:
    """Run a measuring check: its own jobs, alone on the machine while grading; a Verdict whatever happens."""
    from .diagnosis import failure_verdict
    from .planning import trial_for

    trial = trial_for(plan, call)
    started = time.monotonic()
    with machine.share(exclusive=call.check.measures_speed) as cpus:
        m = Measurement(plan, call, trial, cpus)
        try:
            summary = call.check.measure(m)
            base = {**base, "seconds": round(time.monotonic() - started, 2)}   # the whole measurement
        except JobFailed as failed:
            try:
                return failure_verdict(failed.job, failed.result, call.check, failed.limit,
                                       {**base, "seconds": round(failed.result.seconds, 2)})
            finally:
                _close_jobs(m)
        except ReferenceFailed as exc:
            _close_jobs(m)
            return Verdict(passed=False, status="error", message=str(exc)[:600],
                           hint="This is a problem of the machine or the course install, not of your code: "
                                "tell your instructor, with this message.", **base)
        except CheckFailed as failure:
            _close_jobs(m)
            return Verdict(passed=False, status=failure.status, message=failure.message, hint=failure.hint,
                           details=failure.details, **{**base, "seconds": round(time.monotonic() - started, 2)})
        _close_jobs(m)
    details = {}
    if isinstance(summary, tuple):
        summary, details = summary
    return Verdict(passed=True, message=summary, details=details, **base)


def cpu_seconds(job: Job) -> float:
    """CPU time (user + system, reaped children included) of every process under the job's launcher, read from
    the kernel's /proc, not asked of the processes. In the sandbox every process of the job is below it, so a
    check can tell whether a job it is not running stays idle (no background work slowing the other job)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))   # fields[1]: the parent's pid
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / ticks    # utime stime cutime cstime
    todo, total = [job.proc.pid] if job.proc is not None else [], 0.0
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def _close_jobs(m: Measurement) -> None:
    for job in m.jobs:
        job.close()
    m.jobs.clear()


__all__ = ["CheckFailed", "Inconclusive", "JobFailed", "Measurement", "ReferenceFailed", "cpu_seconds",
           "run_measured"]
