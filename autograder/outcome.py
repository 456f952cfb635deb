"""What one task of a job returned: each rank's reply (untrusted: the learner's process produced it) and what the
harness measured around it from outside (time, memory)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankOutcome:
    """What one rank sent back for one task (untrusted: the learner's process produced it)."""
    rank: int
    ok: bool
    result: Any = None           # what the rank part returned
    error: dict | None = None    # describe_exception() of what the learner's code raised
    phase: str = ""              # "import", "group" or "run"
    calls: dict = field(default_factory=dict)
    replied: float = 0.0         # monotonic time the reply arrived


@dataclass
class TaskResult:
    part: str
    outcomes: list[RankOutcome | None]   # None: this rank sent nothing
    started: float
    seconds: float
    timed_out: bool = False
    problem: str = ""                    # job-level: a rank died, a process claimed another rank, ...
    unread: list[int] = field(default_factory=list)   # ranks that had not taken all their inputs by the deadline
    peak_rss: list[int] = field(default_factory=list)    # bytes per rank, the most VmRSS seen while it ran
    start_rss: list[int] = field(default_factory=list)   # bytes per rank when the inputs were sent
    # The memory the rank itself holds (RssAnon + RssShmem: heap, tensors, shared memory), without the
    # libraries' code pages that VmRSS also counts (file-backed, paged in as code is first used):
    peak_private: list[int] = field(default_factory=list)    # bytes per rank, the most seen while it ran
    start_private: list[int] = field(default_factory=list)   # bytes per rank when the inputs were sent
    # The exact peak of VmRSS per rank over the task (VmHWM, reset when the inputs were sent): empty where the reset
    # was not allowed (meter.MemoryWindow.exact).
    peak_resident: list[int] = field(default_factory=list)
    # GPU memory (NCCL jobs): what NVML says each rank's process uses on the device(s) (gpumemory.py).
    peak_device: list[int] = field(default_factory=list)
    start_device: list[int] = field(default_factory=list)
    # Bytes the job sent over its own loopback from the first input to the last reply (gloo's traffic, read
    # from outside); None where that counter is not the job's alone (no sandbox) or not its traffic (NCCL).
    sent_bytes: int | None = None

    @property
    def complete(self) -> bool:
        return not self.problem and not self.timed_out and all(o is not None and o.ok for o in self.outcomes)

    def results(self) -> list[Any]:
        return [o.result for o in self.outcomes]


def rank_error(raw: Any) -> dict | None:
    """A rank's error description, with every field a bounded string (it came from the learner's process)."""
    if not isinstance(raw, dict):
        return None
    out = {k: str(raw.get(k, ""))[:limit] for k, limit in
           (("type", 100), ("message", 2000), ("line", 400), ("where", 200), ("traceback", 6000))}
    out["line"] = out["line"] or out["type"]
    return out
