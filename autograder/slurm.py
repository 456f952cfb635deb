"""Talking to Slurm: job arrays for grading (submit, follow, cancel) and sbatch scripts for the course's scripts.

Only Slurm's own commands are used (sbatch, squeue, scancel, scontrol), so any Slurm that an
instructor can submit to works; `sacct` is not used (it needs Slurm's accounting database,
which many small clusters do not run). Grading's use of it is in gradepool.py.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import Refused

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
# States in which a task may still write (squeue's long names); every other state is an end.
STILL_RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT", "STOPPED"}


class SlurmUnavailable(Refused):
    """Slurm's commands are not here; the message says which and what to do."""


def require() -> None:
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise SlurmUnavailable(f"--slurm needs Slurm's commands on PATH ({', '.join(missing)} not found): run course "
                               f"grade on a Slurm login node, or leave out --slurm to grade on this machine")


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the grading tasks run (`course grade --slurm ...`)."""
    partition: str | None = None
    gres: str | None = None              # e.g. gpu:2 (each task's GPUs; Slurm sets CUDA_VISIBLE_DEVICES)
    max_parallel: int | None = None      # tasks running at once (sbatch --array=...%K)
    cpus_per_task: int = 2               # when nodes are shared (no speed is measured)
    extra: tuple[str, ...] = field(default_factory=tuple)   # more sbatch options, e.g. --account=cs336


def time_option(seconds: int) -> str:
    """sbatch's --time as minutes:seconds (Slurm rounds a limit up to whole minutes)."""
    return f"{seconds // 60}:{seconds % 60:02d}"


def submit_array(command: list[str], count: int, *, name: str, output: str, seconds: int, options: SlurmOptions,
                 exclusive: bool, env: dict[str, str]) -> str:
    """One `sbatch --array=0-(count-1)` job running `command` per task; returns the array's job id."""
    array = f"0-{count - 1}" + (f"%{options.max_parallel}" if options.max_parallel else "")
    args = ["sbatch", "--parsable", f"--array={array}", f"--job-name={name}", f"--output={output}",
            f"--time={time_option(seconds)}", "--export=ALL", "--no-requeue"]
    args += ["--exclusive"] if exclusive else [f"--cpus-per-task={options.cpus_per_task}"]
    args += [f"--partition={options.partition}"] if options.partition else []
    args += [f"--gres={options.gres}"] if options.gres else []
    args += list(options.extra)
    args += ["--wrap", shlex.join(command)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SlurmUnavailable(f"sbatch refused the grading job: {done.stderr.strip()[:500]}")
    return done.stdout.strip().split(";")[0]    # --parsable: "jobid" or "jobid;cluster"


def task_states(job_id: str) -> dict[int, tuple[str, str]] | None:
    """{task index: (state, reason)} of the array's tasks that Slurm still knows; None when squeue did not answer."""
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={job_id}",
                               "--format=%K|%T|%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # A job that Slurm has already forgotten (MinJobAge) is an "Invalid job id": every task has ended.
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        index, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if index.isdigit():
            states[int(index)] = (state, reason)
    return states


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


# ------------------------------------------------------------------ sbatch scripts for the course's scripts

def sbatch_script(script: str, args: list[str] | tuple[str, ...] = (), *, nodes: int = 2, gpus_per_node: int = 0,
                  procs_per_node: int | None = None, cpus_per_node: int | None = None, time: str = "00:30:00",
                  partition: str | None = None, max_restarts: int = 3, torchrun: str | None = None,
                  workdir: str | None = None) -> str:
    """An sbatch script that runs `script` with torchrun on `nodes` nodes: one agent per node (srun), the c10d
    rendezvous on the allocation's first node, the job id as rendezvous id, restarts on failure."""
    procs = procs_per_node or gpus_per_node or 1
    cpus = cpus_per_node or procs
    beside = Path(sys.executable).with_name("torchrun")   # this venv's torchrun: the same path on every node
    torchrun = torchrun or (str(beside) if beside.exists() else "torchrun")
    name = Path(script).stem
    lines = ["#!/bin/bash",
             f"# Runs {script} with torchrun on {nodes} node(s), {procs} process(es) per node "
             f"(written by `course slurm-script`).",
             f"#SBATCH --job-name={name}",
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1        # one torchrun agent per node; it starts that node's workers",
             f"#SBATCH --cpus-per-task={cpus}"]
    lines += [f"#SBATCH --gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    lines += [f"#SBATCH --partition={partition}"] if partition else []
    lines += [f"#SBATCH --time={time}",
              "#SBATCH --output=%x-%j.out         # job name and id: one log per job",
              "set -euo pipefail",
              "",
              "# The first node of the allocation hosts the rendezvous store; every agent connects to it. The port",
              "# comes from the job id, so two jobs that share a first node do not meet on the same port.",
              'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              "port=$((20000 + SLURM_JOB_ID % 20000))",
              f"export OMP_NUM_THREADS={max(1, cpus // procs)}    # the node's cores shared by its workers",
              "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1   # restarts with c10d on torch 2.14 (02, section 6)"]
    lines += [f"cd {shlex.quote(workdir)}"] if workdir else []
    lines += ["",
              "# srun starts one agent per node; --kill-on-bad-exit stops the others when one fails for good.",
              f"srun --kill-on-bad-exit=1 {shlex.quote(torchrun)} \\",
              f'    --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node {procs} \\',
              '    --rdzv-backend c10d --rdzv-endpoint "$head_node:$port" --rdzv-id "$SLURM_JOB_ID" \\',
              f"    --max-restarts {max_restarts} \\",
              "    " + shlex.join([script, *args])]
    return "\n".join(lines) + "\n"
