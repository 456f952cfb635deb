"""`course bench`: reference numbers on this machine: speed-ups of the reference solutions, what
each check costs over a bare torchrun launch, and what grading a class costs.

Each benchmark is a named function in BENCHMARKS that prints its own lines; the reference
solutions come from the source notebooks' %%writefile cells (what the course ships). Add a
benchmark by appending (name, description, function) to BENCHMARKS.
"""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import launch, policy
from .rank.toolkit import environment
from .config import SHORTCUTS_ENV, course_root
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
        from .cells import write_notebook_files

        target = self.folder / assignment
        if not (target / filename).exists():
            write_notebook_files("source", assignment, target)
        return target / filename

    def floor(self, ranks: int = 2, repeats: int = 3) -> float:
        """Median wall time of a bare `ranks`-rank torchrun job (init a gloo group, one barrier, exit)."""
        if self._floor is None:
            env = policy.rank_env(policy.choose_profile(load_course(), "cpu"))
            hello = self.folder / "hello.py"
            hello.write_text(HELLO)
            times = []
            for _ in range(repeats):
                cmd = launch.torchrun_command(ranks, [sys.executable, str(hello)])   # torchrun runs it --no-python
                start = time.perf_counter()
                subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=True, timeout=300)
                times.append(time.perf_counter() - start)
            self._floor = statistics.median(times)
        return self._floor


def _line(label: str, value: str) -> None:
    print(f"  {label:<46} {value}", flush=True)


def _cost(b: Bench, label: str, seconds: float, passed: bool) -> None:
    """A check's wall time and what it costs over the bare torchrun floor."""
    _line(label, f"{seconds:.1f} s, {seconds - b.floor():+.1f} s over the floor" + ("" if passed else "  [FAILED]"))


def _each_check_alone(b: Bench, module: Path, exercises: tuple[str, ...]) -> None:
    """Each exercise's check in its own launch (no cache)."""
    for exercise in exercises:
        start = time.perf_counter()   # the whole launch: a verdict's own seconds are its task's, from inputs sent
        v = run_check(exercise, module=module, world_size=2, profile="cpu")
        _cost(b, f"{exercise} check alone", time.perf_counter() - start, v.passed)


# ------------------------------------------------------------------ benchmarks

def bench_floor(b: Bench) -> None:
    _line("bare 2-rank torchrun (gloo init + barrier)", f"{b.floor():.1f} s (median of 3)")


def bench_ddp(b: Bench) -> None:
    """The reference DDP script's speed-up (2 ranks vs 1), and each 04_ddp check's cost over the floor."""
    train = b.reference("04_ddp", "ddp_train.py")
    v = run_check("ddp.train", module=train, world_size=2, profile="cpu")
    speed = v.details.get("speedup")
    if speed:   # the reference script graded as the learner's: both figures come from the same rounds
        _line("DDP speed-up, 2 ranks vs 1 (reference)",
              f"{speed['reference']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in speed['reference_ratios'])}); "
              f"graded as a learner's {speed['measured']:.2f}x; pass line {speed['threshold']:.2f}x")
    else:
        _line("DDP speed-up, 2 ranks vs 1 (reference)", f"not measured: {v.to_text()}")
    _cost(b, "ddp.train check (reference beside, 2 warm-ups + 3 rounds)", v.seconds, v.passed)
    parts = b.reference("04_ddp", "ddp_parts.py")
    exercises = ("ddp.init", "ddp.data", "ddp.wrap", "ddp.metrics", "ddp.checkpoint")
    _each_check_alone(b, parts, exercises)
    start = time.perf_counter()
    cache = VerdictCache()
    verdicts = [run_check(e, module=parts, world_size=2, profile="cpu", cache=cache) for e in exercises]
    seconds = time.perf_counter() - start
    _cost(b, "all five ddp_parts checks in one launch", seconds, all(v.passed for v in verdicts))


def bench_pipeline(b: Bench) -> None:
    """The reference pipeline's speed-up (4 microbatches vs 1, 2 stages), the measured bubble, each check's cost."""
    train = b.reference("05_pipeline", "pipeline_train.py")
    start = time.perf_counter()
    v = run_check("pipeline.train", module=train, world_size=2, profile="cpu")
    seconds = time.perf_counter() - start   # the whole check (a verdict's own seconds are one task's)
    speed, timeline = v.details.get("speedup"), v.details.get("timeline")
    if speed and timeline:   # the reference script graded as the learner's: both figures come from the same rounds
        _line("pipeline 2 stages: 4 microbatches vs 1",
              f"{speed['reference']:.2f}x (rounds {', '.join(f'{x:.2f}' for x in speed['reference_ratios'])}); "
              f"graded as a learner's {speed['measured']:.2f}x; ideal {speed['ideal']:.2f}x; pass line "
              f"{speed['threshold']:.2f}x")
        for name, bubble in timeline["bubble"].items():
            _line(f"pipeline bubble, {name} 2 x 4", f"{bubble['measured']:.0%} measured, {bubble['formula']:.0%} "
                  f"formula (p-1)/(m+p-1); step {timeline['seconds'][name]:.2f} s")
    else:
        _line("pipeline 2 stages: 4 microbatches vs 1", f"not measured: {v.to_text()}")
    _cost(b, "pipeline.train check (reference beside, 3 rounds + timeline)", seconds, v.passed)
    _each_check_alone(b, b.reference("05_pipeline", "pipeline_parts.py"),
                      ("pipeline.split", "pipeline.schedule", "pipeline.step", "pipeline.checkpoint"))


def bench_fsdp(b: Bench) -> None:
    """FSDP against DDP (the reference script and its DDP twin, 2 ranks): memory each rank added, read from /proc;
    each check's cost."""
    train = b.reference("06_fsdp", "fsdp_train.py")
    v = run_check("fsdp.train", module=train, world_size=2, profile="cpu")
    memory, seconds = v.details.get("memory"), v.details.get("seconds")
    if memory and seconds:
        mib = {k: " / ".join(f"{x / 2**20:.0f}" for x in values) for k, values in memory["bytes"].items()}
        _line("FSDP / DDP memory added per rank (reference)",
              f"{memory['ratio']:.2f}x (FSDP {mib['FSDP']} vs DDP {mib['DDP']} MiB by rank, RssAnon + RssShmem "
              f"from /proc; pass line {memory['threshold']:.2f}x)")
        _line("FSDP / DDP run of the script (reference)",
              f"{seconds['FSDP']:.1f} vs {seconds['DDP']:.1f} s (whole main(), timed from outside)")
    else:
        _line("FSDP / DDP memory added per rank (reference)", f"not measured: {v.to_text()}")
    _cost(b, "fsdp.train check (script + DDP twin: two jobs)", v.seconds, v.passed)
    _each_check_alone(b, b.reference("06_fsdp", "fsdp_parts.py"), ("fsdp.wrap", "fsdp.checkpoint"))


def bench_scratch(b: Bench) -> None:
    """07_from_scratch: bucketed vs naive step time under the check's communication cost, ZeRO-1's optimizer bytes
    per rank at 2 and 3 ranks, each check's cost."""
    parts = b.reference("07_from_scratch", "scratch_parts.py")
    start = time.perf_counter()
    v = run_check("scratch.bucketed", module=parts, world_size=2, profile="cpu")
    seconds = time.perf_counter() - start
    overlap = v.details.get("overlap")
    if overlap:   # the reference graded as the learner's: every figure from the same rounds
        sp, ms = overlap["speedup"], overlap["seconds"]
        _line("bucketed vs naive step, 2 ranks",
              f"{sp['reference']:.2f}x (graded as a learner's {sp['yours']:.2f}x; buckets launched after backward "
              f"{sp['no_overlap']:.2f}x; pass line {sp['threshold']:.2f}x; {overlap['note'].split(';')[0]})")
        _line("  step times (median)", ", ".join(f"{k} {1000 * t:.0f} ms" for k, t in ms.items()))
    else:
        _line("bucketed vs naive step, 2 ranks", f"not measured: {v.message}")
    _cost(b, "scratch.bucketed check (4 sides, rotated rounds)", seconds, v.passed)
    for ws in (2, 3):
        z = run_check("scratch.zero1", module=parts, world_size=ws, profile="cpu")
        memory = z.details.get("memory")
        if memory:
            plain, mine = memory["bytes"]["plain Adam (every rank)"][0], memory["bytes"]["ShardedOptimizer"]
            _line(f"ZeRO-1 Adam state per rank, {ws} ranks",
                  " / ".join(f"{x / 1024:.1f}" for x in mine) + f" KiB vs plain Adam {plain / 1024:.1f} KiB "
                  f"(largest shard {max(mine) / plain:.2f}x; ideal {1 / ws:.2f}x)")
    _each_check_alone(b, parts, ("scratch.naive", "scratch.zero1", "scratch.zero2", "scratch.gpipe"))
    start = time.perf_counter()
    cache = VerdictCache()
    verdicts = [run_check(e, module=parts, world_size=2, profile="cpu", cache=cache)
                for e in ("scratch.naive", "scratch.zero1", "scratch.zero2", "scratch.gpipe")]
    _cost(b, "naive, zero1, zero2 and gpipe checks in one launch", time.perf_counter() - start, all(x.passed for x in verdicts))


def _grade_copies(b: Bench, assignment: str, copies: int, *, jobs: int, shortcuts: bool) -> tuple[float, list]:
    """`course grade --jobs N` on `copies` students who all hand in the solved source notebook (full marks).

    Returns the wall time of the whole run (it generates the assignment's template once)
    and the records, whose `seconds` is one submission's autograde from start to feedback.
    """
    from .grading import Record, grade
    from .submissions import solved

    a = load_course().assignment(assignment)
    run = b.folder / f"grade-{assignment}-{copies}x-jobs{jobs}-{'with' if shortcuts else 'without'}"
    handed_in = solved(course_root() / "source" / a.id / a.notebook)
    for i in range(copies):
        folder = run / "submissions" / f"student{i + 1:02d}" / a.id
        folder.mkdir(parents=True)
        (folder / a.notebook).write_text(handed_in)
    # The switch reaches the grading jobs through the environment they inherit.
    with environment({SHORTCUTS_ENV: "on" if shortcuts else "off"}), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        grade(run / "submissions", out=run / "out", assignments=[a.id], jobs=jobs, progress=False)
        seconds = time.perf_counter() - start
    return seconds, [Record.load(p) for p in sorted((run / "out" / "records").glob("*/*.json"))]


def _full_marks(records: list, points: float) -> bool:
    return all(r is not None and r.status == "graded" and not r.flags and sum(r.points.values()) == points
               for r in records)


def _why_not_full(records: list, points: float) -> str:
    """What kept a full-marks submission from full marks: its status, points and flags."""
    for r in records:
        if r is None:
            return "no record written"
        if not _full_marks([r], points):
            return f"{r.status}, {sum(r.points.values()):g}/{points:g}" + (f"; {'; '.join(r.flags)}" if r.flags else "")
    return ""


def bench_grading(b: Bench) -> None:
    """One full-marks submission per graded assignment, autograded without grading's shortcuts, then with them."""
    totals = {False: 0.0, True: 0.0}
    for a in load_course().assignments:
        if not a.graded:
            continue
        seconds, why = {}, ""
        for shortcuts in (False, True):
            _, records = _grade_copies(b, a.id, 1, jobs=1, shortcuts=shortcuts)
            seconds[shortcuts] = records[0].seconds if records and records[0] else float("nan")
            totals[shortcuts] += seconds[shortcuts]
            if not _full_marks(records, a.points):
                why = why or f"{'with' if shortcuts else 'without'}: {_why_not_full(records, a.points)}"
        _line(f"{a.id}: one submission, without -> with", f"{seconds[False]:.0f} s -> {seconds[True]:.0f} s "
              f"({seconds[False] / seconds[True]:.2f}x faster)" + (f"  [NOT FULL MARKS: {why}]" if why else ""))
    _line("all graded assignments, without -> with", f"{totals[False]:.0f} s -> {totals[True]:.0f} s "
          f"({totals[False] / totals[True]:.2f}x faster)")


def bench_throughput(b: Bench, assignment: str = "02_torchrun", copies: int = 10) -> None:
    """`course grade` on 10 full-marks submissions of 02_torchrun with --jobs 1, then --jobs 2."""
    a = load_course().assignment(assignment)
    walls = {}
    for jobs in (1, 2):
        walls[jobs], records = _grade_copies(b, a.id, copies, jobs=jobs, shortcuts=True)
        ok = len(records) == copies and _full_marks(records, a.points)
        _line(f"{copies} x {a.id}, --jobs {jobs}", f"{walls[jobs]:.0f} s ({walls[jobs] / copies:.0f} s per submission, "
              f"{3600 * copies / walls[jobs]:.0f} per hour; template generated once)"
              + ("" if ok else "  [NOT FULL MARKS]"))
    _line("throughput, --jobs 2 over --jobs 1", f"{walls[1] / walls[2]:.2f}x")


LONG = ("grading", "throughput")
BENCHMARKS: list[tuple[str, str, Callable[[Bench], None]]] = [
    ("floor", "bare 2-rank torchrun launch: the cost every check pays", bench_floor),
    ("ddp", "04_ddp: reference speed-up 2 ranks vs 1, and each check's cost", bench_ddp),
    ("pipeline", "05_pipeline: reference speed-up 4 microbatches vs 1, measured bubble, each check's cost",
     bench_pipeline),
    ("fsdp", "06_fsdp: memory per rank, FSDP script vs its DDP twin (2 ranks, read from /proc), each check's cost",
     bench_fsdp),
    ("scratch", "07_from_scratch: bucketed vs naive under a shaped loopback, ZeRO-1 bytes per rank, each check's cost",
     bench_scratch),
    # The two below take 15-30 min each on 2 cores: they run only when named.
    ("grading", "autograde wall time of one full submission per assignment, without and with grading's shortcuts "
                "(shared launches, trusted verdicts, demos not run)", bench_grading),
    ("throughput", "grading throughput: 10 submissions of 02_torchrun with --jobs 1 and --jobs 2", bench_throughput),
]


def main(names: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all but the LONG ones) and print their numbers; 2 if a name is unknown."""
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
            if (name not in names) if names else (name in LONG):
                continue
            print(f"{name}: {description}", flush=True)
            fn(b)
    return 0
