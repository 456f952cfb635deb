"""The rank driver: `main(JOB_DIR)` in every torchrun rank of a check (or alone); see session.Job._command.

It connects to the harness over JOB_DIR/socket, says which rank it is, and then only
does what the harness asks, one message at a time: import the learner's module, run a
rank part on the inputs the harness sent for this rank, send back what the learner's
functions returned. The harness never tells a rank anything about the other ranks, the
expected values or how it judges; the process is made non-dumpable before anything is
received, so another rank's process cannot read its memory either.
"""
from __future__ import annotations

import faulthandler
import importlib
import os
import resource
import signal
import socket
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

from . import wire
from .context import RankContext, count_collectives
from .toolkit import describe_exception

STACK_SIGNAL = signal.SIGUSR1   # the harness asks for this rank's Python stack with it


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: other processes of the same user cannot ptrace this one or read /proc/PID/mem."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass   # not Linux: nothing to harden


def _capture_output(log: Path, limit: int) -> None:
    """stdout/stderr to this rank's log file, at most `limit` bytes (beyond that the rank gets SIGXFSZ)."""
    fd = os.open(log, os.O_WRONLY | os.O_TRUNC)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _import_learner(path: str):
    """Import the learner's file under its own name, its folder first on sys.path (scripts import their parts)."""
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(Path(path).stem)


def _part(name: str):
    """'ddp.wrap' -> autograder.rank.parts.ddp.wrap (the rank side of that exercise)."""
    assignment, _, function = name.partition(".")
    return getattr(importlib.import_module(f"{__package__}.parts.{assignment}"), function)


def _init_group(ctx: RankContext, timeout: float) -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    extra = {}
    if ctx.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(ctx.device))
        extra["device_id"] = torch.device(ctx.device)   # NCCL binds the group to this GPU (no barrier warning)
    dist.init_process_group(ctx.backend, timeout=timedelta(seconds=timeout), **extra)


def _reply_error(sock, phase: str, exc: BaseException, module: str | None, calls: Counter) -> None:
    wire.send(sock, {"ok": False, "phase": phase, "error": describe_exception(exc, module), "calls": dict(calls)})


def main(job_dir: str) -> None:
    job = Path(job_dir)
    rank = int(os.environ.get("RANK", "0"))
    _not_dumpable()
    stacks = open(job / "stacks" / f"rank{rank}.txt", "w")
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(job / "socket"))
    wire.send(sock, {"hello": rank, "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                     "world_size": int(os.environ.get("WORLD_SIZE", "1"))})
    setup = wire.receive(sock)
    _capture_output(job / "logs" / f"rank{rank}.log", int(setup["output_limit"]))
    if setup.get("memory_limit"):
        cap = int(setup["memory_limit"])
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    calls: Counter = Counter()
    device, backend = "cpu", ""
    if setup["distributed"]:
        import torch

        from .device import backend_for, device_name

        device = device_name(int(os.environ["LOCAL_RANK"]), torch.cuda.is_available())
        backend = backend_for(device)
        count_collectives(calls)
    ctx = RankContext(rank=rank, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                      world_size=int(os.environ.get("WORLD_SIZE", "1")), device=device, backend=backend,
                      scratch=Path(setup["scratch"]), calls=calls)
    module, learner = setup.get("module"), None
    while True:
        try:
            message = wire.receive(sock)
        except (EOFError, OSError):
            break
        todo = message.get("do")
        if todo == "exit":
            break
        if todo == "import":
            try:
                learner = _import_learner(module) if module else None
                wire.send(sock, {"ok": True})
            except BaseException as exc:  # noqa: the learner's import may raise anything, SystemExit included
                _reply_error(sock, "import", exc, module, calls)
            continue
        if todo == "prepare":   # before the first task, so that no task's time holds it: the harness's process
            phase = "group"     # group, and the rank parts the tasks will use (imported, warmed up)
            try:
                if message.get("group"):
                    _init_group(ctx, float(message["time_limit"]))
                phase = "run"
                for name in message.get("parts", []):
                    _part(name)
                wire.send(sock, {"ok": True})
            except BaseException as exc:  # noqa: reported like any failure
                _reply_error(sock, phase, exc, module, calls)
            continue
        if todo == "task":
            calls.clear()
            ctx.time_limit = float(message["time_limit"])
            phase = "group"
            try:
                if message["group"] == "harness":
                    _init_group(ctx, float(message["time_limit"]))
                phase = "run"
                outputs = _part(message["part"])(ctx, learner, message["inputs"])
                payload = wire.encode({"ok": True, "outputs": outputs, "calls": dict(calls)})
            except BaseException as exc:  # noqa: whatever the learner raised is reported, not re-raised
                _reply_error(sock, phase, exc, module, calls)
                continue
            sock.sendall(wire.HEADER.pack(len(payload)) + payload)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # no interpreter teardown: a half-open process group must not hang the exit


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -I -m autograder.rank JOB_DIR")
    main(sys.argv[1])
