"""What a rank part knows about its rank (passed explicitly, never a global), and the collective counter."""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Counted for hints only ("global_mean never called all_reduce"): a count is never evidence.
# Not isend/irecv: P2POp accepts only those exact functions.
COUNTED = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "reduce",
           "reduce_scatter", "reduce_scatter_tensor", "barrier", "gather", "scatter", "send", "recv")


@dataclass
class RankContext:
    rank: int
    local_rank: int
    world_size: int
    device: str              # "cpu" or "cuda:LOCAL_RANK"
    backend: str             # "gloo" or "nccl" ("" in a local check)
    scratch: Path            # a writable folder of this job (checkpoints, metrics files)
    calls: Counter = field(default_factory=Counter)   # the learner's collectives in this task, by name
    time_limit: float = 60.0
    kept: dict = field(default_factory=dict)          # what a part keeps for the job's later tasks (its models)


def count_collectives(calls: Counter) -> None:
    """Count calls to torch.distributed collectives into `calls` (hints for a failing learner)."""
    import torch.distributed as dist

    for name in COUNTED:
        original = getattr(dist, name, None)
        if original is None or getattr(original, "_course_counted", False):
            continue

        @functools.wraps(original)
        def counted(*args, __original=original, __name=name, **kwargs):
            calls[__name] += 1
            return __original(*args, **kwargs)

        counted._course_counted = True
        setattr(dist, name, counted)
