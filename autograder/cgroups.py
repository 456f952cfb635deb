"""Process and memory limits for one sandbox: fresh cgroups (v1 pids and memory controllers, as root where they are
writable) that every process of the sandbox joins before exec, killed and removed with it. Where none can be made,
the RLIMITs and time limits still apply (sandbox.py)."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from .launch import signal_if

PROCESSES = 512
MEMORY_BYTES = 12 * 2**30   # everything in one sandbox (the machine has to hold --jobs sandboxes)


def _own(controller: str) -> Path | None:
    """This process's cgroup folder for a v1 controller (e.g. /sys/fs/cgroup/memory/<path>), if writable."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                folder = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
                return folder if os.access(folder, os.W_OK) else None
    except (OSError, ValueError):
        pass
    return None


def available() -> bool:
    """Whether process and memory limits can be set per sandbox here (root, writable v1 controllers)."""
    return os.geteuid() == 0 and _own("pids") is not None


def make() -> list[Path]:
    """Fresh cgroups for one sandbox (as root, where the controllers are writable): at most PROCESSES processes
    and MEMORY_BYTES of memory for everything in it. Empty where none can be made (RLIMITs still apply)."""
    if os.geteuid() != 0:
        return []
    made = []
    name = f"course-{uuid.uuid4().hex[:12]}"
    for controller, limits in (("pids", {"pids.max": str(PROCESSES)}),
                               ("memory", {"memory.limit_in_bytes": str(MEMORY_BYTES)})):
        parent = _own(controller)
        if parent is None:
            continue
        group = parent / name
        try:
            group.mkdir()
            for key, value in limits.items():
                (group / key).write_text(value)
            made.append(group)
        except OSError:
            kill_and_remove([group])
    return made


def join(groups: list[Path]) -> None:
    """In the child, before exec: enter the cgroups, so that every later fork is counted in them."""
    for group in groups:
        (group / "cgroup.procs").write_text(str(os.getpid()))


def kill_and_remove(groups: list[Path]) -> None:
    """Kill whatever is left in the cgroups and remove them."""
    for group in groups:
        for _ in range(100):
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:   # still in the group once pinned: its pid has not gone to another process
                signal_if(pid, signal.SIGKILL, lambda: f"/{group.name}\n" in Path(f"/proc/{pid}/cgroup").read_text())
            time.sleep(0.02)
        try:
            group.rmdir()
        except OSError:
            pass
