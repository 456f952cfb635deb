"""Set-up helpers the notebooks call in their first code cell."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from . import config, policy


def grading() -> bool:
    """True while nbgrader executes the notebook (autograde or validate)."""
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def setup() -> int:
    """Prepare this kernel for torchrun cells and say which profile is active; returns the rank count.

    - puts this Python's scripts (torchrun, course) first on PATH, so `!torchrun` is the right one;
    - exports the profile's per-rank environment (OMP_NUM_THREADS=1 on the cpu profile), which
      every `!torchrun` launched from the notebook inherits.
    """
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir + os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    course = config.load()
    profile = policy.choose_profile(course)
    nproc = policy.ranks_for(profile)
    os.environ.update(policy.rank_env(profile))
    threads = profile.threads_per_rank or "default"
    print(f"Profile: {profile.name} ({profile.backend}, {nproc} ranks, {threads} thread(s) per rank). "
          f"Use NPROC={nproc} in torchrun cells.")
    return nproc
