"""torchrun command lines, free ports, and stopping a job: its whole process tree, and every process carrying its token.

Every process of a job carries a unique token in its environment. Outside a sandbox, the
sweep finds and kills every process the job started when it ends, including children that
moved to another session (inside a sandbox, killing the sandbox kills everything).
`stop_tree` stops a process and every descendant (sandboxes included, whatever session or
process group they moved to) and returns only once they are gone.
"""
from __future__ import annotations

import os
import select
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


def forks_ranks() -> bool:
    """Whether torchrun's ranks are forked from its own process, which has imported torch already (Linux), or each
    is a fresh interpreter (elsewhere: on macOS a fork after its system frameworks loaded can crash)."""
    return sys.platform.startswith("linux")


def torchrun_command(nprocs: int, command: list[str], *, nnodes: int = 1, endpoint: str | None = None,
                     run_id: str = "", forked: bool = False) -> list[str]:
    """torchrun (as `python -I -m torch.distributed.run`, this interpreter) running `command` in every rank: a
    program, or with forked=True a Python script and its arguments, run in a process forked from torchrun's own
    (torch is imported there already: no rank imports it again)."""
    cmd = [sys.executable, "-I", "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--max-restarts=0"]
    cmd += ["--run-path", "--start-method=fork"] if forked else ["--no-python"]
    if nnodes == 1:
        cmd.append("--standalone")  # c10d rendezvous on a port the OS picks: checks never collide
    else:
        # With c10d the rendezvous numbers the nodes itself (--node-rank is ignored, with a warning).
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    return cmd + command


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids (other than ours) whose environment has name=value: the job's processes, wherever they moved."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and carries(int(entry), name, value)]


def sweep(token: str, name: str = TOKEN_ENV) -> list[int]:
    """Kill every process whose environment has name=token; return the pids that were alive."""
    killed = []
    for _ in range(20):
        pids = processes_with_env(name, token)
        if not pids:
            break
        for pid in pids:   # read again once pinned: a pid that changed hands since the scan is not ours to kill
            if signal_if(pid, signal.SIGKILL, lambda: carries(pid, name, token)):
                killed.append(pid)
        time.sleep(0.05)
    return killed


def _scan() -> dict[int, list[tuple[int, int]]]:
    """parent pid -> (child pid, its start time), for every live (not zombie) process."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    return children


def _stat(pid: int) -> list[bytes]:
    """/proc/<pid>/stat's fields from the state on (state, ppid, ..., start time at [19]); [] if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rfind(b")") + 2:].split() if stat else []


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def trees(pids: list[int]) -> dict[int, set[int]]:
    """Each pid with its live descendants (one read of /proc for all of them)."""
    children = _scan()
    return {pid: {pid, *_below(children, pid)} for pid in pids}


def _below(children: dict[int, list[tuple[int, int]]], pid: int) -> dict[int, int]:
    """pid's descendants in a `_scan` (not pid itself), each with its start time."""
    found, todo = {}, [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            if child not in found:
                found[child] = start
                todo.append(child)
    return found


def _pidfds_work() -> bool:
    """Whether this kernel has pidfds (Linux 5.3+; RHEL 8's 4.18 does not)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except (AttributeError, OSError):
        return False


PIDFDS = _pidfds_work()


class _Pinned:
    """One process, held by a pidfd: signals sent through it can never reach a later process that the kernel gave
    the same pid (pids are reused once freed). Without pidfds (old kernels) it falls back to the pid, checked just
    before: the race is narrowed, not closed."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = os.pidfd_open(pid) if PIDFDS else None

    def send(self, sig: int) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                os.kill(self.pid, sig)
        except OSError:   # already gone
            pass

    def ended(self) -> bool:
        if self.fd is not None:
            return bool(select.select([self.fd], [], [], 0)[0])   # a pidfd is readable once its process exited
        fields = _stat(self.pid)
        return not fields or fields[0] == b"Z"

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _pin(pid: int, still_ours) -> _Pinned | None:
    """`pid` pinned if `still_ours()` holds once it is (the check comes after pinning: then it is about the
    pinned process), else None."""
    try:
        pinned = _Pinned(pid)
    except OSError:   # gone
        return None
    try:
        ours = still_ours()
    except OSError:   # its /proc entry is gone: it exited
        ours = False
    if ours:
        return pinned
    pinned.close()
    return None


def signal_if(pid: int, sig: int, still_ours) -> bool:
    """Send `sig` to `pid` if `still_ours()` holds once the process is pinned (see `_pin`); whether it was sent."""
    pinned = _pin(pid, still_ours)
    if pinned is None:
        return False
    try:
        pinned.send(sig)
    finally:
        pinned.close()
    return True


def carries(pid: int, name: str, value: str) -> bool:
    """Whether process `pid` has name=value in its environment (what every process of a job carries)."""
    return f"{name}={value}".encode() in _read(f"/proc/{pid}/environ").split(b"\0")


def stop_tree(proc, *, token: str | None = None, token_env: str = TOKEN_ENV, grace: float = 8.0) -> list[int]:
    """Stop `proc` (a Popen) and everything it started; return once all of it is gone (at most `grace` s).

    The tree is frozen first (SIGSTOP, repeated until no new process appears: a stopped process
    cannot fork), then killed, so nothing escapes by being reparented while we kill its parent;
    processes that already left the tree are found by their token. Every process is signalled through
    a pidfd (`_Pinned`) opened while it was still the one found in the tree, so a process that exited meanwhile and
    whose pid went to someone else's process is never touched; for the same reason a `proc` already
    reaped (poll/wait returned) is not walked from: its pid may be another process's by now, and its
    children have moved to another parent (the token finds them). Returns the pids still alive after
    `grace` seconds (none, unless a process is stuck in the kernel).
    """
    frozen: dict[int, _Pinned] = {}
    deadline = time.monotonic() + grace
    try:
        if proc.returncode is None:   # not reaped yet: the pid is still proc's (a zombie keeps it)
            own = _pin(proc.pid, lambda: proc.returncode is None)
            if own is not None:
                frozen[proc.pid] = own
                own.send(signal.SIGSTOP)
        while frozen and time.monotonic() < deadline:
            new = {pid: start for pid, start in _below(_scan(), proc.pid).items() if pid not in frozen}
            if not new:
                break
            for pid, start in new.items():
                pinned = _pin(pid, lambda: (_stat(pid) or [b""] * 20)[19] == str(start).encode())
                if pinned is not None:
                    pinned.send(signal.SIGSTOP)
                    frozen[pid] = pinned
        for pinned in frozen.values():
            pinned.send(signal.SIGKILL)
        if token is not None:
            sweep(token, token_env)
        proc.wait()
        left = [pid for pid, pinned in frozen.items() if not pinned.ended()]
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [pid for pid in left if not frozen[pid].ended()]
        return left
    finally:
        for pinned in frozen.values():
            pinned.close()
