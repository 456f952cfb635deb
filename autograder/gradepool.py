"""Where grading jobs run: on this machine's cores (LocalPool) or as the tasks of a Slurm job array (SlurmPool).

Either way a job is one `python -m autograder.gradejob` process per submission, writing its
result to OUT/logs/<student>--<assignment>.log, and the grading parent (grading.py) is the
only writer of records, feedback and grades.csv. A pool starts jobs, reports each finished
submission once (with the reason when no result can be expected: a time limit, Slurm's kill)
and stops everything on request.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import machine, sandbox, slurm
from .launch import stop_tree
from .submissions import Submission

GRADING_TOKEN = "COURSE_GRADING_TOKEN"


@dataclass
class Finished:
    sub: Submission
    failure: str | None = None   # why the job left no result to read (None: read its log)


def log_path(out: Path, sub: Submission) -> Path:
    return out / "logs" / f"{sub.student}--{sub.assignment}.log"


def job_command(out: Path, sub: Submission) -> list[str]:
    return [sys.executable, "-m", "autograder.gradejob", str(out), sub.student, sub.assignment, str(sub.notebook)]


def job_env(hide: str, safe: bool, **more: str) -> dict[str, str]:
    return {**os.environ, sandbox.HIDE_ENV: hide, sandbox.MODE_ENV: "on" if safe else "off", **more}


class LocalPool:
    """`--jobs N` jobs side by side, each pinned to its own cores (and GPUs), speed checks taking turns through a
    lock file (machine.py); a job over `seconds` is stopped."""

    def __init__(self, out: Path, jobs: int, hide: str, safe: bool, seconds: int, gpus: int = 0):
        self.out, self.hide, self.safe, self.seconds = out, hide, safe, seconds
        self.slots = machine.split_cpus(jobs)
        self.gpu_slots = machine.split_gpus(len(self.slots), gpus) if gpus else [None] * len(self.slots)
        self.lock = out / ".machine.lock"
        self.queue: list[Submission] = []
        self.running: dict[int, tuple] = {}

    def add(self, subs: list[Submission]) -> None:
        self.queue += subs

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def _start(self, slot: int, sub: Submission) -> tuple:
        token = uuid.uuid4().hex
        cpus = self.slots[slot]
        env = job_env(self.hide, self.safe, OMP_NUM_THREADS=str(max(1, len(cpus) // 2)),
                      **{GRADING_TOKEN: token, machine.LOCK_ENV: str(self.lock)})
        if self.gpu_slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu_slots[slot]
        log = open(log_path(self.out, sub), "wb")
        proc = subprocess.Popen(job_command(self.out, sub), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        return sub, proc, token, log, time.monotonic()

    def poll(self) -> list[Finished]:
        for slot in range(len(self.slots)):
            if slot not in self.running and self.queue:
                self.running[slot] = self._start(slot, self.queue.pop(0))
        finished = []
        for slot, (sub, proc, token, log, started) in list(self.running.items()):
            late = time.monotonic() - started > self.seconds
            if proc.poll() is None and not late:
                continue
            self._stop(proc, token, log)
            del self.running[slot]
            finished.append(Finished(sub, f"grading took longer than {self.seconds // 60} min" if late else None))
        return finished

    @staticmethod
    def _stop(proc, token: str, log) -> None:
        """Kill the job and everything it started (its sandboxes whatever session they moved to, processes that
        carry its token); return once they are gone."""
        left = stop_tree(proc, token=token, token_env=GRADING_TOKEN)
        if left:
            print(f"grading: processes {left} of a stopped job are still exiting", file=sys.stderr)
        log.close()

    def stop(self) -> None:
        for _sub, proc, token, log, _ in self.running.values():
            self._stop(proc, token, log)
        self.running.clear()
        self.queue.clear()


class SlurmPool:
    """One `sbatch --array` job per call of add(), one task per submission (autograder/slurmtask.py runs the same
    gradejob on its node); followed with squeue, cancelled with scancel.

    Assignments whose checks time a speed-up get whole nodes (`--exclusive`: one submission per node, as a
    measurement needs the machine alone); the others share nodes, `cpus_per_task` cores each."""

    POLL_SECONDS = 2.0
    SHARED_FS_GRACE = 30.0   # a task's files may reach this node after Slurm says it ended (NFS caches lookups)

    def __init__(self, out: Path, options: slurm.SlurmOptions, hide: str, seconds: int, exclusive: bool):
        self.out, self.options, self.hide, self.seconds, self.exclusive = out, options, hide, seconds, exclusive
        self.arrays: list[tuple[str, Path]] = []   # (job id, batch folder)
        self.pending: dict[tuple[str, int], Submission] = {}
        self.ended: dict[tuple[str, int], float] = {}   # when Slurm first said a task ended, its marker not yet seen
        self.last_poll = 0.0

    def add(self, subs: list[Submission]) -> None:
        if not subs:
            return
        batch = self.out / "slurm" / uuid.uuid4().hex[:12]
        batch.mkdir(parents=True)
        tasks = [dict(student=s.student, assignment=s.assignment, log=str(log_path(self.out, s)),
                      command=job_command(self.out, s)) for s in subs]
        (batch / "tasks.json").write_text(json.dumps({"tasks": tasks}))
        env = job_env(self.hide, True)   # OMP_NUM_THREADS: each task sets it from its node's cores (slurmtask.py)
        job = slurm.submit_array([sys.executable, "-m", "autograder.slurmtask", str(batch)], len(subs),
                                 name="course-grade", output=str(batch / "task-%a.out"), seconds=self.seconds,
                                 options=self.options, exclusive=self.exclusive, env=env)
        (batch / "job").write_text(job)
        self.arrays.append((job, batch))
        self.pending.update({(job, i): s for i, s in enumerate(subs)})
        how = "one submission per node (--exclusive: speed is measured)" if self.exclusive else \
            f"{self.options.cpus_per_task} cores per submission"
        print(f"grading: {len(subs)} submission(s) sent to Slurm as array job {job}, {how}; "
              f"Slurm's output in {batch}", file=sys.stderr)

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def poll(self) -> list[Finished]:
        if time.monotonic() - self.last_poll < self.POLL_SECONDS:
            return []
        self.last_poll = time.monotonic()
        finished = []
        for job, batch in self.arrays:
            states = slurm.task_states(job)
            if states is None:   # squeue did not answer (slurmctld busy or restarting): ask again later
                continue
            for (j, index), sub in list(self.pending.items()):
                if j != job:
                    continue
                state, reason = states.get(index, ("ENDED", ""))
                if state in slurm.STILL_RUNNING:
                    continue
                failure = self._failure(batch, index, state, reason)
                first = self.ended.setdefault((j, index), time.monotonic())
                if failure and time.monotonic() - first < self.SHARED_FS_GRACE and state == "COMPLETED":
                    continue   # ended well: its marker is on the way
                del self.pending[(j, index)]
                finished.append(Finished(sub, failure))
        return finished

    def _failure(self, batch: Path, index: int, state: str, reason: str) -> str | None:
        """None when the task ran to its end (its log holds the result); else what Slurm says happened."""
        if (batch / f"{index}.done").exists():
            return None
        said = ""
        try:
            said = next((ln.strip() for ln in (batch / f"task-{index}.out").read_text(errors="replace").splitlines()
                         if "***" in ln or "error" in ln.lower()), "")
        except OSError:
            pass
        because = f" ({reason})" if reason and reason != "None" else ""
        return f"Slurm ended the grading task: {state}{because}" + (f": {said[:300]}" if said else "")

    def stop(self) -> None:
        """scancel every array with a task still pending, and wait (up to a minute) until Slurm has no task of them
        left running."""
        arrays = {job for job, _ in self.pending}
        for job in arrays:
            slurm.cancel(job)
        deadline = time.monotonic() + 60
        while arrays and time.monotonic() < deadline:
            states = [slurm.task_states(job) for job in arrays]
            if all(s is not None and not any(st in slurm.STILL_RUNNING for st, _ in s.values()) for s in states):
                break
            time.sleep(1)
        self.pending.clear()
