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
                     "send", "recv")  # not isend/irecv: P2POp accepts only those exact functions


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


def result_path(job_dir: Path, rank: int, index: int) -> Path:
    """Where rank `rank` writes its result for the job's exercise number `index`."""
    return job_dir / f"rank{rank}.{index}.json"


def _write_result(job_dir: Path, rank: int, index: int, payload: dict[str, Any]) -> None:
    tmp = job_dir / f".rank{rank}.{index}.tmp"
    tmp.write_text(json.dumps(payload))
    tmp.rename(result_path(job_dir, rank, index))


def _wait_for_peers(job_dir: Path, world_size: int, index: int, deadline: float) -> bool:
    """File-system barrier after exercise `index`: True when every rank succeeded, False if one failed.

    No collective is used, so a rank that finished never exits while a peer still waits in a
    collective it skipped (which would turn a clear hang, with stacks, into a confusing
    'connection closed' on the peer), and a batch never runs on after one rank failed.
    """
    while time.monotonic() < deadline:
        present = [p for p in (result_path(job_dir, r, index) for r in range(world_size)) if p.exists()]
        if any(not json.loads(p.read_text()).get("ok", False) for p in present):
            return False
        if len(present) == world_size:
            return True
        time.sleep(0.05)
    return False


def _run_one(check, ctx: RankContext, learner) -> Any:
    from . import checks

    if isinstance(check, checks.LocalCheck):
        try:
            return {"summary": check.run(learner, ctx.params)}
        except checks.CheckFailed as failure:
            return {"failed": failure.message, "hint": failure.hint}
    if check.init_group:
        ctx.init_group()
    return check.scenario(ctx, learner)


def main(job_dir: str) -> int:
    """Run the job's exercises in order (several share one launch when they use the same module)."""
    job_dir = Path(job_dir)
    job = json.loads((job_dir / "job.json").read_text())
    rank = int(os.environ["RANK"])
    (job_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    stack_file = open(job_dir / f"rank{rank}.stack", "w")
    faulthandler.register(STACK_SIGNAL, file=stack_file, all_threads=True)
    _capture_output(job_dir, rank)
    if job.get("memory_limit_gb"):
        cap = int(job["memory_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    start = time.monotonic()

    from . import checks  # imported after output capture, so import warnings are captured too

    todo = [(checks.get(e["id"]), e["params"]) for e in job["exercises"]]
    distributed = not all(isinstance(c, checks.LocalCheck) for c, _ in todo)
    local_rank, world_size, device, backend = 0, 1, "cpu", ""
    calls: Counter = Counter()
    if distributed:
        import torch

        from .policy import backend_for, device_name

        local_rank, world_size = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        device = device_name(local_rank, torch.cuda.is_available())
        backend = backend_for(device)
        _spy_on_collectives(calls)

    all_ok, learner, imported = True, None, False
    for index, (check, params) in enumerate(todo):
        calls.clear()
        ctx = RankContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                          backend=backend, params=params, job_dir=job_dir, time_limit=job["time_limit"], calls=calls)
        t0 = time.monotonic()
        phase = "import"
        try:
            if not imported:
                learner = import_learner_module(Path(job["module"])) if job.get("module") else None
                imported = True
            phase = "run"
            payload = {"ok": True, "result": _run_one(check, ctx, learner)}
        except BaseException as exc:  # noqa: the learner's code may raise anything, SystemExit included
            payload = {"ok": False, "phase": phase, "error": describe_exception(exc, job.get("module"))}
        payload["calls"] = dict(calls)
        payload["seconds"] = time.monotonic() - t0
        _write_result(job_dir, rank, index, payload)
        all_ok = payload["ok"] and _wait_for_peers(job_dir, world_size, index, start + job["time_limit"])
        if not all_ok:
            break
    if all_ok and "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a failed peer's half-open group must not hang the exit


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
