"""What the trusted side reads about a job's ranks from outside their processes.

- Memory: each rank's process tree (the rank's pid is the one the kernel reported for its
  connection, not one it claims; what it forks counts as its own), VmRSS and RssAnon + RssShmem
  from /proc/<pid>/status, polled while a task runs; on NCCL jobs also the GPU memory NVML
  reports per process (gpumemory.py).
- Peak memory, exactly: writing 5 to /proc/<pid>/clear_refs resets the kernel's high-water mark (VmHWM) to the
  current resident size; VmHWM read at the window's end is the most the process held in between, however short
  the peak (polling every 20 ms misses a peak that comes and goes between two reads). The reset needs root, or
  the same user and a dumpable process: the rank driver makes itself non-dumpable, so a notebook running as an
  ordinary user cannot reset it and the window keeps the polled figure only (`MemoryWindow.exact` is False).
- Bytes on the wire: the transmit counter of the loopback in the job's own network namespace
  (the sandbox unshares the network, so every byte on it is the job's): gloo's traffic; NCCL's
  does not go through it.
"""
from __future__ import annotations

import time

from . import gpumemory, launch

TREE_POLL = 0.2   # seconds between reads of which processes each rank started (a scan of /proc)


def process_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon + RssShmem) of a process in bytes, read from /proc/<pid>/status; (0, 0) if it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssShmem"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values.get("VmRSS", 0), values.get("RssAnon", 0) + values.get("RssShmem", 0)


def reset_peak(pid: int) -> bool:
    """Reset the process's high-water mark of resident memory (VmHWM) to its current size; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_resident(pid: int) -> int | None:
    """VmHWM of a process in bytes: the most it held resident since it started or since reset_peak; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def loopback_bytes(pid: int | None) -> int | None:
    """Bytes sent so far over the loopback of the network namespace `pid` is in, from /proc/<pid>/net/dev; None
    where it cannot be read."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            for line in f:
                name, _, counters = line.partition(":")
                if name.strip() == "lo":
                    return int(counters.split()[8])   # receive: 8 counters, then transmit bytes
    except (TypeError, OSError, ValueError, IndexError):
        pass
    return None


class MemoryWindow:
    """The memory of every rank over one task: where it started and the most seen while the task ran.

    A rank's memory is that of everything it started (its process tree, re-read every TREE_POLL s), so work
    moved into a forked child is counted where it belongs; pages a fork shares count twice (a learner who forks
    is measured high, never low). `device`: also poll NVML (NCCL jobs)."""

    def __init__(self, pids: dict[int, int], world_size: int, *, device: bool = False):
        self.pids, self.world_size, self.on_device = pids, world_size, device
        self.trees: dict[int, set[int]] = {}   # rank pid -> its process tree; replaced, never changed in place
        self.tree_read = 0.0
        starts = [self.rank_memory(pids[r]) if r in pids else (0, 0) for r in range(world_size)]
        self.start_rss, self.start_private = [s[0] for s in starts], [s[1] for s in starts]
        self.peak_rss, self.peak_private = [0] * world_size, [0] * world_size
        self.peak_device = self.device_memory() if device else []
        self.start_device = list(self.peak_device)
        # The exact peaks: every process of every rank's tree gets its high-water mark reset now (processes the
        # rank starts later begin with their own). exact: every reset was allowed.
        self.exact = bool(pids) and all(reset_peak(p) for tree in self.trees.values() for p in tree)
        self.peak_resident: list[int] = []   # bytes per rank, set by close() when exact

    def close(self) -> None:
        """Read the exact peaks at the window's end: per rank, the sum of its tree's high-water marks (processes
        that peak at different times are counted as if together: a learner who forks is measured high, never
        low). A process of the tree that ended inside the window took its mark with it: the polled figure
        (peak_rss) still saw it, up to TREE_POLL late, and a judge takes the larger of the two."""
        if not self.exact:
            return
        self.trees = launch.trees(list(self.pids.values()))
        self.peak_resident = [sum(peak_resident(p) or 0 for p in self.trees.get(self.pids[r], {self.pids[r]}))
                              if r in self.pids else 0 for r in range(self.world_size)]

    def rank_memory(self, pid: int) -> tuple[int, int]:
        """(VmRSS, RssAnon + RssShmem) summed over the rank's process tree."""
        now = time.monotonic()
        if now - self.tree_read >= TREE_POLL:
            self.trees = launch.trees(list(self.pids.values()))
            self.tree_read = now
        sizes = [process_memory(p) for p in self.trees.get(pid, {pid})]
        return sum(m[0] for m in sizes), sum(m[1] for m in sizes)

    def device_memory(self) -> list[int]:
        """Bytes of GPU memory each rank's process tree uses now, from NVML (0 for a rank that holds none); the
        trees are those rank_memory read last."""
        used = gpumemory.read()
        return [sum(used.get(p, 0) for p in self.trees.get(self.pids[r], {self.pids[r]})) if r in self.pids else 0
                for r in range(self.world_size)]

    def poll(self) -> None:
        for rank, pid in self.pids.items():
            rss, held = self.rank_memory(pid)
            self.peak_rss[rank] = max(self.peak_rss[rank], rss)
            self.peak_private[rank] = max(self.peak_private[rank], held)
        if self.on_device:
            self.peak_device = [max(a, b) for a, b in zip(self.peak_device, self.device_memory())]
