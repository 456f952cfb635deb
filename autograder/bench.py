"""`course bench`: reference numbers on this machine: speed-ups of the reference solutions, and what
each check costs over a bare torchrun launch.

Each benchmark is a named function in BENCHMARKS that prints its own lines; the reference
solutions come from the source notebooks' %%writefile cells (what the course ships). Add a
benchmark by appending (name, description, function) to BENCHMARKS.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import launch, policy
from .config import course_root
from .harness import VerdictCache, load_course, run_check

HELLO = """import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
"""


class Bench:
    """What the benchmarks share: a scratch folder, the reference files, and the torchrun floor (measured once)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._floor: float | None = None

    def reference(self, assignment: str, filename: str) -> Path:
        """`filename` as the source notebook of `assignment` writes it (all its %%writefile files, in one folder)."""
        from .reverify import writefile_cells

        target = self.folder / assignment
        if not (target / filename).exists():
            course = load_course()
            notebook = course_root() / "source" / assignment / course.assignment(assignment).notebook
            target.mkdir(parents=True, exist_ok=True)
            for name, text in writefile_cells(json.loads(notebook.read_text())).items():
                (target / name).write_text(text)
        return target / filename

    def floor(self, ranks: int = 2, repeats: int = 3) -> float:
        """Median wall time of a bare `ranks`-rank torchrun job (init a gloo group, one barrier, exit)."""
        if self._floor is None:
            env = policy.rank_env(policy.choose_profile(load_course(), "cpu"))
            hello = self.folder / "hello.py"
            hello.write_text(HELLO)
            times = []
            for _ in range(repeats):
                cmd = launch.torchrun_command(ranks, [str(hello)])
                start = time.perf_counter()
                subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=True, timeout=300)
                times.append(time.perf_counter() - start)
            self._floor = statistics.median(times)
        return self._floor


def _line(label: str, value: str) -> None:
    print(f"  {label:<46} {value}", flush=True)


# ------------------------------------------------------------------ benchmarks

def bench_floor(b: Bench) -> None:
    _line("bare 2-rank torchrun (gloo init + barrier)", f"{b.floor():.1f} s (median of 3)")


def bench_ddp(b: Bench) -> None:
    """The reference DDP script's speed-up (2 ranks vs 1), and each 04_ddp check's cost over the floor."""
    train = b.reference("04_ddp", "ddp_train.py")
    v = run_check("ddp.train", module=train, world_size=2, profile="cpu")
    speed = v.details.get("speedup")
    if speed:
        rates = " / ".join(f"{k} {r:.0f} img/s" for k, r in speed["images_per_sec"].items())
        _line("DDP speed-up, 2 ranks vs 1 (reference)",
              f"{speed['measured']:.2f}x (pairs {', '.join(f'{x:.2f}' for x in speed['ratios'])}; pass line "
              f"{speed['threshold']:.2f}x; {rates}; worst run waited for a core {speed['busy']:.0%} of its time)")
    else:
        _line("DDP speed-up, 2 ranks vs 1 (reference)", f"not measured: {v.to_text()}")
    floor = b.floor()
    _line("ddp.train check (warm-up + 3 pairs)", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over the floor"
          + ("" if v.passed else "  [FAILED]"))
    parts = b.reference("04_ddp", "ddp_parts.py")
    for exercise in ("ddp.init", "ddp.data", "ddp.wrap", "ddp.metrics", "ddp.checkpoint"):
        v = run_check(exercise, module=parts, world_size=2, profile="cpu")
        _line(f"{exercise} check alone", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over the floor"
              + ("" if v.passed else "  [FAILED]"))
    start = time.perf_counter()
    cache = VerdictCache()
    verdicts = [run_check(e, module=parts, world_size=2, profile="cpu", cache=cache)
                for e in ("ddp.init", "ddp.data", "ddp.wrap", "ddp.metrics", "ddp.checkpoint")]
    seconds = time.perf_counter() - start
    _line("all five ddp_parts checks in one launch", f"{seconds:.1f} s, {seconds - floor:+.1f} s over the floor"
          + ("" if all(v.passed for v in verdicts) else "  [FAILED]"))


def bench_pipeline(b: Bench) -> None:
    """The reference pipeline's speed-up (4 microbatches vs 1, 2 stages), the measured bubble, each check's cost."""
    train = b.reference("05_pipeline", "pipeline_train.py")
    v = run_check("pipeline.train", module=train, world_size=2, profile="cpu")
    speed, timeline = v.details.get("speedup"), v.details.get("timeline")
    if speed and timeline:
        _line("pipeline 2 stages: 4 microbatches vs 1",
              f"{speed['measured']:.2f}x (pairs {', '.join(f'{x:.2f}' for x in speed['ratios'])}; ideal "
              f"{speed['ideal']:.2f}x; pass line {speed['threshold']:.2f}x)")
        for name, bubble in timeline["bubble"].items():
            _line(f"pipeline bubble, {name} 2 x 4", f"{bubble['measured']:.0%} measured, {bubble['formula']:.0%} "
                  f"formula (p-1)/(m+p-1); step {timeline['seconds'][name]:.2f} s")
    else:
        _line("pipeline 2 stages: 4 microbatches vs 1", f"not measured: {v.to_text()}")
    floor = b.floor()
    _line("pipeline.train check (3 pairs + timeline)", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over the floor"
          + ("" if v.passed else "  [FAILED]"))
    parts = b.reference("05_pipeline", "pipeline_parts.py")
    for exercise in ("pipeline.split", "pipeline.schedule", "pipeline.step", "pipeline.checkpoint"):
        v = run_check(exercise, module=parts, world_size=2, profile="cpu")
        _line(f"{exercise} check alone", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over the floor"
              + ("" if v.passed else "  [FAILED]"))


def bench_fsdp(b: Bench) -> None:
    """FSDP over DDP in one run of the reference script (2 ranks): bytes held per rank and step time; check costs."""
    train = b.reference("06_fsdp", "fsdp_train.py")
    # One epoch of 640 images: 20 optimizer steps per side, step time = median interval between steps.
    v = run_check("fsdp.train", module=train, world_size=2, profile="cpu", images=640, epochs=1)
    memory, steps = v.details.get("memory"), v.details.get("step_seconds")
    if memory and steps:
        ddp, fsdp = memory["parts"]["DDP"], memory["parts"]["FSDP"]
        _line("FSDP / DDP bytes per rank, 2 ranks (reference)",
              f"{memory['ratio']:.2f}x ({sum(fsdp.values()) / 2**20:.2f} vs {sum(ddp.values()) / 2**20:.2f} MiB of "
              f"params + grads + Adam state; pass line {memory['threshold']:.2f}x)")
        _line("FSDP / DDP step time, 2 ranks (reference)",
              f"{steps['FSDP'] / steps['DDP']:.2f}x ({steps['FSDP'] * 1e3:.0f} vs {steps['DDP'] * 1e3:.0f} ms, "
              "median step, slowest rank)")
    else:
        _line("FSDP / DDP bytes per rank, 2 ranks (reference)", f"not measured: {v.to_text()}")
    floor = b.floor()
    _line("fsdp.train check (script + DDP, 20 steps each)", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over "
          "the floor" + ("" if v.passed else "  [FAILED]"))
    parts = b.reference("06_fsdp", "fsdp_parts.py")
    for exercise in ("fsdp.wrap", "fsdp.checkpoint"):
        v = run_check(exercise, module=parts, world_size=2, profile="cpu")
        _line(f"{exercise} check alone", f"{v.seconds:.1f} s, {v.seconds - floor:+.1f} s over the floor"
              + ("" if v.passed else "  [FAILED]"))


BENCHMARKS: list[tuple[str, str, Callable[[Bench], None]]] = [
    ("floor", "bare 2-rank torchrun launch: the cost every check pays", bench_floor),
    ("ddp", "04_ddp: reference speed-up 2 ranks vs 1, and each check's cost", bench_ddp),
    ("pipeline", "05_pipeline: reference speed-up 4 microbatches vs 1, measured bubble, each check's cost",
     bench_pipeline),
    ("fsdp", "06_fsdp: FSDP / DDP bytes per rank and step time (2 ranks, same run), each check's cost", bench_fsdp),
]


def main(names: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all) and print their numbers; 2 if a name is unknown."""
    known = {name: fn for name, _, fn in BENCHMARKS}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        print(f"course bench: unknown benchmark {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    print(f"course bench: cpu profile, {len(os.sched_getaffinity(0))} core(s) available; timings are wall-clock, on this "
          "machine as it is now (other jobs slow them down)", flush=True)
    with tempfile.TemporaryDirectory(prefix="course-bench-") as tmp:
        b = Bench(Path(tmp))
        for name, description, fn in BENCHMARKS:
            if names and name not in names:
                continue
            print(f"{name}: {description}", flush=True)
            fn(b)
    return 0
