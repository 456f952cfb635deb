"""What every torchrun rank of a check executes: `python -m autograder.worker JOB_DIR`.

Set up (stack dump on signal, output capture, collective spy), import the learner's
module, run the check's per-rank scenario, and write this rank's result as JSON
into the job directory. Rank state travels in a RankContext, never a global.
"""
from __future__ import annotations

import faulthandler
import functools
import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .launch import STACK_SIGNAL

OUTPUT_LIMIT_BYTES = 64 * 1024 * 1024   # a rank that prints more than this is stopped (SIGXFSZ)
SPIED_COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
                     "reduce", "reduce_scatter", "reduce_scatter_tensor", "barrier", "gather", "scatter",
                     "send", "recv", "isend", "irecv")


@dataclass
class RankContext:
    """Everything a check's scenario may know about its rank; passed explicitly."""
    rank: int
    local_rank: int
    world_size: int
    device: str
    backend: str
    params: dict[str, Any]
    job_dir: Path
    time_limit: float
    calls: Counter = field(default_factory=Counter)  # collectives the learner called, by name

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def init_group(self) -> None:
        """The harness's own process group (for exercises where the learner does not create it)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            # The harness's wall-clock limit fires first and dumps stacks; this is the backstop.
            dist.init_process_group(self.backend, timeout=timedelta(seconds=self.time_limit))


def _spy_on_collectives(calls: Counter) -> None:
    """Count the learner's calls to torch.distributed collectives (evidence of communication)."""
    import torch.distributed as dist

    for name in SPIED_COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None or getattr(original, "_course_spy", False):
            continue

        @functools.wraps(original)
        def spy(*args, __original=original, __name=name, **kwargs):
            calls[__name] += 1
            return __original(*args, **kwargs)

        spy._course_spy = True
        setattr(dist, name, spy)


def _capture_output(job_dir: Path, rank: int) -> None:
    """Send this rank's stdout/stderr to rank<N>.log (bounded), so nothing reaches the notebook."""
    log = os.open(job_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))


def import_learner_module(path: Path):
    """Import the learner's file under its own name, with its folder on sys.path (scripts import their parts)."""
    folder = str(path.parent.resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(path.stem)


def describe_exception(exc: BaseException, learner_file: str | None) -> dict[str, Any]:
    """Type, message and the traceback, trimmed to frames worth showing a learner."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames)
                  if learner_file and Path(f.filename).resolve() == Path(learner_file).resolve()), "")
    return {
        "type": type(exc).__name__,
        "message": str(exc).strip()[:2000],
        "where": where,
        "traceback": "".join(traceback.format_exception(exc))[-6000:],
    }


def _write_result(job_dir: Path, rank: int, payload: dict[str, Any]) -> None:
    tmp = job_dir / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.rename(job_dir / f"rank{rank}.json")


def _wait_for_peers(job_dir: Path, world_size: int, deadline: float) -> None:
    """Stay alive (without any collective) until every rank wrote its result or one failed.

    A rank that finished must not exit while a peer still waits in a collective it
    skipped: its exit would turn a clear hang (with stacks) into a confusing
    'connection closed' error on the peer.
    """
    while time.monotonic() < deadline:
        results = [job_dir / f"rank{r}.json" for r in range(world_size)]
        present = [p for p in results if p.exists()]
        if len(present) == world_size:
            return
        if any(not json.loads(p.read_text()).get("ok", False) for p in present):
            return
        time.sleep(0.05)


def main(job_dir: str) -> int:
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    rank = int(os.environ["RANK"])
    (job_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    stack_file = open(job_dir / f"rank{rank}.stack", "w")
    faulthandler.register(STACK_SIGNAL, file=stack_file, all_threads=True)
    _capture_output(job_dir, rank)
    start = time.monotonic()

    from . import checks  # imported after output capture, so import warnings are captured too

    check = checks.get(job["exercise"])
    if isinstance(check, checks.LocalCheck):
        ctx = RankContext(rank=0, local_rank=0, world_size=1, device="cpu", backend="", params=job["params"],
                          job_dir=job_dir, time_limit=job["time_limit"])
    else:
        import torch

        from .policy import backend_for, device_name

        local_rank = int(os.environ["LOCAL_RANK"])
        device = device_name(local_rank, torch.cuda.is_available())
        ctx = RankContext(rank=rank, local_rank=local_rank, world_size=int(os.environ["WORLD_SIZE"]),
                          device=device, backend=backend_for(device), params=job["params"], job_dir=job_dir,
                          time_limit=job["time_limit"])
        _spy_on_collectives(ctx.calls)
    payload: dict[str, Any]
    phase = "import"
    try:
        learner = import_learner_module(Path(job["module"])) if job.get("module") else None
        phase = "run"
        if isinstance(check, checks.LocalCheck):
            try:
                result = {"summary": check.run(learner, ctx.params)}
            except checks.CheckFailed as failure:
                result = {"failed": failure.message, "hint": failure.hint}
        else:
            if check.init_group:
                ctx.init_group()
            result = check.scenario(ctx, learner)
        payload = {"ok": True, "result": result}
    except BaseException as exc:  # noqa: the learner's code may raise anything, SystemExit included
        payload = {"ok": False, "phase": phase, "error": describe_exception(exc, job.get("module"))}
    payload["calls"] = dict(ctx.calls)
    payload["seconds"] = time.monotonic() - start
    _write_result(job_dir, rank, payload)
    if payload["ok"]:
        _wait_for_peers(job_dir, ctx.world_size, start + job["time_limit"])
    if payload["ok"] and "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a failed peer's half-open group must not hang the exit


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
