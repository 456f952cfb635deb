"""Sharing one machine between parallel grading jobs: cores per job, and exclusive time for speed checks.

`course grade --jobs N` pins each job to its own cores and names a lock file in
$COURSE_MACHINE_LOCK. Correctness checks hold the lock shared (they run side by side, each
on its job's cores); a check that measures speed holds it exclusively and runs its ranks on
every core, so no concurrent job can distort its ratio. Outside grading nothing is locked.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Iterator

LOCK_ENV = "COURSE_MACHINE_LOCK"


def all_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


def split_cpus(jobs: int, cpus: set[int] | None = None) -> list[set[int]]:
    """Disjoint core sets, one per job (a job gets at least one core; extra cores go to the first jobs)."""
    cpus = sorted(cpus or all_cpus())
    jobs = max(1, min(jobs, len(cpus)))
    return [set(cpus[i::jobs]) for i in range(jobs)]


def split_gpus(jobs: int, gpus: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES per job: disjoint GPU lists (empty when there are fewer GPUs than jobs)."""
    per = gpus // jobs if jobs else 0
    return [",".join(str(g) for g in range(i * per, (i + 1) * per)) for i in range(jobs)]


@contextmanager
def share(exclusive: bool) -> Iterator[set[int] | None]:
    """Hold the grading machine lock (if grading in parallel); yields the cores a speed check may use."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield None
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield all_cpus() if exclusive else None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
