"""torchrun command lines, free ports, and stopping a job: its whole process tree, and every process carrying its token.

Every process of a job carries a unique token in its environment. Outside a sandbox, the
sweep finds and kills every process the job started when it ends, including children that
moved to another session (inside a sandbox, killing the sandbox kills everything).
`stop_tree` stops a process and every descendant (sandboxes included, whatever session or
process group they moved to) and returns only once they are gone.
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


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, for every live (not zombie) process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rfind(b")") + 2:].split()[:2]
        if state != b"Z":
            children.setdefault(int(ppid), []).append(int(entry))
    return children


def trees(pids: list[int]) -> dict[int, set[int]]:
    """Each pid with its live descendants (one read of /proc for all of them)."""
    children, out = _children(), {}
    for pid in pids:
        found, todo = set(), [pid]
        while todo:
            p = todo.pop()
            if p not in found:
                found.add(p)
                todo += children.get(p, [])
        out[pid] = found
    return out


def _tree(pid: int) -> set[int]:
    """pid and its live descendants."""
    return trees([pid])[pid]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def stop_tree(proc, *, token: str | None = None, token_env: str = TOKEN_ENV, grace: float = 8.0) -> list[int]:
    """Stop `proc` (a Popen) and everything it started; return once all of it is gone (at most `grace` s).

    The tree is frozen first (SIGSTOP, repeated until no new process appears: a stopped process
    cannot fork), then killed, so nothing escapes by being reparented while we kill its parent;
    processes that already left the tree are found by their token. Returns the pids still
    alive after `grace` seconds (none, unless a process is stuck in the kernel).
    """
    frozen: set[int] = set()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        new = _tree(proc.pid) - frozen   # proc itself is not reaped yet: its pid is not reused
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen |= new
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    if token is not None:
        sweep(token, token_env)
    proc.wait()
    left = [p for p in frozen if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if _alive(p)]
    return left


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
