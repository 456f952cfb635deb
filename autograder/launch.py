"""Run torchrun jobs in their own session with a hard time limit; a time-out is a result, not an exception.

Every process of a job carries a unique token in its environment, so that when the
job ends (pass, fail, crash or time-out) the sweep finds and kills every process it
started, including children that moved to another session.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TOKEN_ENV = "COURSE_CHECK_TOKEN"
STACK_SIGNAL = signal.SIGUSR1       # the worker dumps its Python stack on this signal
AGENT_LOG_LIMIT = 64 * 1024


@dataclass(frozen=True)
class LaunchResult:
    returncode: int | None   # None on time-out
    timed_out: bool
    seconds: float
    agent_log: str           # torchrun's own output (tail)


def free_port() -> int:
    """A port the OS reports free now (for explicit rendezvous endpoints only; checks use --standalone)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nprocs: int, args: list[str], *, nnodes: int = 1,
                     endpoint: str | None = None, run_id: str = "") -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, the same interpreter) for one node of a job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--max-restarts=0"]
    if nnodes == 1:
        cmd.append("--standalone")  # c10d rendezvous on a port the OS picks: checks never collide
    else:
        # With c10d the rendezvous numbers the nodes itself (--node-rank is ignored, with a warning).
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    return cmd + args


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids (other than ours) whose environment has name=value: the job's processes, wherever they moved."""
    needle = f"{name}={value}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def sweep(token: str, name: str = TOKEN_ENV) -> list[int]:
    """Kill every process whose environment has name=token; return the pids that were alive."""
    killed = []
    for _ in range(20):
        pids = processes_with_env(name, token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def _read_pids(job_dir: Path) -> list[int]:
    pids = []
    for f in job_dir.glob("rank*.pid"):
        try:
            pids.append(int(f.read_text()))
        except (OSError, ValueError):
            pass
    return pids


def _dump_stacks(job_dir: Path) -> None:
    """Ask every live rank for its Python stack (faulthandler in the worker writes rankN.stack)."""
    for pid in _read_pids(job_dir):
        try:
            os.kill(pid, STACK_SIGNAL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    expected = len(_read_pids(job_dir))
    while time.monotonic() < deadline:
        written = [f for f in job_dir.glob("rank*.stack") if f.stat().st_size > 0]
        if len(written) >= expected:
            break
        time.sleep(0.05)
    time.sleep(0.1)  # let faulthandler finish the last lines


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return ("[... earlier output cut ...]\n" + text) if size > limit else text


def run_job(commands: list[list[str]], job_dir: Path, time_limit: float | Callable[[float], float],
            env: dict[str, str], cwd: Path | None = None, cpus: set[int] | None = None) -> LaunchResult:
    """Run one or more torchrun agents (one per simulated node) until they exit or time runs out.

    `time_limit` is seconds from the start, or a function of the elapsed seconds that
    returns the current limit (a job of several exercises earns more time as it makes
    progress). The agents' own output goes to job_dir/agent.log. On time-out every rank's
    Python stack is dumped into job_dir/rank<N>.stack before everything is killed.
    `cpus` pins the job to those cores (None: inherit this process's).
    """
    limit = time_limit if callable(time_limit) else (lambda _elapsed: time_limit)
    job_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    full_env = {**os.environ, **env, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
    log_path = job_dir / "agent.log"
    start = time.monotonic()
    procs, timed_out = [], False
    with open(log_path, "wb") as log:
        try:
            for cmd in commands:
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                              env=full_env, cwd=cwd, start_new_session=True,
                                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None))
            while any(p.poll() is None for p in procs):
                elapsed = time.monotonic() - start
                if elapsed > limit(elapsed):
                    timed_out = True
                    _dump_stacks(job_dir)
                    break
                time.sleep(0.1)
        finally:
            # Whatever happened (including KeyboardInterrupt in a notebook), nothing outlives the job.
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            sweep(token)
            for p in procs:
                p.wait()
    returncode = None if timed_out else max((p.returncode for p in procs), key=abs, default=0)
    return LaunchResult(returncode=returncode, timed_out=timed_out, seconds=time.monotonic() - start,
                        agent_log=_tail(log_path, AGENT_LOG_LIMIT))
