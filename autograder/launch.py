"""torchrun command lines, free ports, and the sweep that kills every process carrying a job's token.

Every process of a job carries a unique token in its environment. Outside a sandbox, the
sweep finds and kills every process the job started when it ends, including children that
moved to another session (inside a sandbox, killing the sandbox kills everything).
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

TOKEN_ENV = "COURSE_CHECK_TOKEN"


def free_port() -> int:
    """A port the OS reports free now (for explicit rendezvous endpoints only; checks use --standalone)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nprocs: int, command: list[str], *, nnodes: int = 1,
                     endpoint: str | None = None, run_id: str = "") -> list[str]:
    """torchrun (as `python -I -m torch.distributed.run`, this interpreter) running `command` in every rank."""
    cmd = [sys.executable, "-I", "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--max-restarts=0",
           "--no-python"]
    if nnodes == 1:
        cmd.append("--standalone")  # c10d rendezvous on a port the OS picks: checks never collide
    else:
        # With c10d the rendezvous numbers the nodes itself (--node-rank is ignored, with a warning).
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    return cmd + command


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
