"""One task of a grading job array on a Slurm node: `python -m autograder.slurmtask BATCH` (trusted).

The task finds its submission in BATCH/tasks.json by $SLURM_ARRAY_TASK_ID, checks that this node
can grade (the grader's files as installed, a sandbox), runs the same `autograder.gradejob` as
local grading with its output in the submission's log, and marks the task done. It writes
nothing else: the parent (course grade, following the array) validates the result and writes
the record, the feedback and grades.csv. The folders are assumed to be on a filesystem that
every node shares, at the same paths (the course, its venv, the output folder).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import install, machine, sandbox


def node_problem() -> str | None:
    """Why this node must not grade (None: it may)."""
    try:
        install.verify()
    except install.InstallChanged as exc:
        return f"this node's grader is not as installed: {exc}"
    if sandbox.mode() != "off":
        why = sandbox.problem()
        if why:
            return f"no sandbox can be made on this node ({os.uname().nodename}): {why}"
    return None


def main(argv: list[str]) -> int:
    batch = Path(argv[0])
    index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    task = json.loads((batch / "tasks.json").read_text())["tasks"][index]
    # Speed checks of tasks that share this node take turns through a lock on the node itself, not on the shared
    # filesystem (there it would make every node wait for every other).
    lock = Path(tempfile.gettempdir()) / f"course-machine-{os.environ.get('SLURM_ARRAY_JOB_ID', 'local')}.lock"
    env = {**os.environ, machine.LOCK_ENV: str(lock),
           "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // 2))}
    with open(task["log"], "wb") as log:
        problem = node_problem()
        if problem:
            log.write(problem.encode() + b"\n")
            code = 3
        else:
            code = subprocess.call(task["command"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    (batch / f"{index}.done").write_text(str(code))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
