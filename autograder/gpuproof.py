"""`course gpu-proof`: prove the course on a GPU host in one command, with everything written to one folder.

    make gpu-proof                         # set up from a clean checkout, then run the proof (8 minutes at most)
    course gpu-proof --out gpu-proof       # the proof alone; --dry-run plans it without running anything

What it runs, on the gpu profile (NCCL, one rank per GPU), each part with its own time budget:
- the environment: GPUs, driver, torch's CUDA and NCCL;
- the data: the synthetic set offline, and the real EuroSAT where it can be downloaded;
- every exercise's check with the source notebook's solution (must pass) at N ranks (N GPUs)
  and, where N >= 2, also at 2; and typical mistakes (tests/controls) that must fail with their hint;
- the speed and memory checks, with their measured, self-calibrated figures;
- every notebook top to bottom (demos and launch cells), the executed copies kept.
With one GPU, the multi-rank checks run on the cpu profile beside it, and the summary says so.

The summary (summary.json) lists every step: what ran where, passed / failed / timed out,
its figures and its log file; a one-screen table is printed. Every step is bounded and
everything a step started is killed with it, so the proof never hangs past its budget.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .controls import TABLE, mistakes
from .launch import stop_tree

TOTAL_BUDGET = 8 * 60        # seconds for the whole proof on a GPU host
# Typical mistakes: the rows of tests/controls/mistakes.toml marked gpu_proof (autograder/controls.py), at most two
# per assignment (one with --quick), each a step that must fail its check with the row's words.

# Assignments whose checks run at 1 rank too:
ONE_RANK = ("02_torchrun", "04_ddp", "06_fsdp", "07_from_scratch", "09_efficiency",
            "10_tensor_parallel")


@dataclass
class Step:
    name: str
    kind: str                  # environment | data | check | mistake | measure | notebook
    profile: str               # gpu | cpu
    budget: float              # seconds
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    kind: str
    profile: str
    status: str                # passed | failed | timed out | skipped | planned
    seconds: float = 0.0
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def solution_folder(assignment: str, into: Path) -> Path:
    from .cells import write_notebook_files

    return write_notebook_files("source", assignment, into / "solutions" / assignment)


def plan(gpus: int, *, profile: str = "gpu", quick: bool = False) -> list[Step]:
    """Every step of the proof for a host with `gpus` GPUs (the cpu profile: a CPU-only rehearsal)."""
    from . import checks
    from .course import load_course

    course = load_course()
    steps = [Step("environment: GPUs, driver, torch CUDA, NCCL", "environment", profile, 30),
             Step("data: synthetic EuroSAT, offline", "data", "cpu", 30, {"source": "synthetic"})]
    if not quick:
        steps.append(Step("data: the real EuroSAT, if it can be downloaded", "data", "cpu", 60, {"source": "auto"}))
    multi = profile if gpus >= 2 or profile == "cpu" else "cpu"   # one GPU: multi-rank checks on the CPUs
    if profile == "gpu" and gpus >= 2:
        sizes = sorted({gpus, 2})
    elif profile == "gpu":
        sizes = [1, 2]      # one GPU: one rank on it, two ranks on the CPUs
    else:
        sizes = [2]
    graded = [a for a in course.assignments if a.graded]
    proven = [m for m in mistakes() if m.gpu_proof]
    if quick:
        graded = graded[:1]
    for a in graded:
        for ws in sizes:
            where = multi if ws > 1 else profile
            if ws == 1 and a.id not in ONE_RANK:
                continue
            plain = [e.id for e in a.exercises if checks.get(e.id).measure is None and not e.world_size]
            if plain:
                steps.append(Step(f"{a.id}: solution checks at {ws} rank(s)", "check", where, 90,
                                  {"assignment": a.id, "exercises": plain, "world_size": ws}))
        for e in a.exercises:   # a check with a world size of its own (tp.two_d's 2 x 2 mesh) runs at it alone
            if e.world_size and checks.get(e.id).measure is None:
                where = profile if profile == "cpu" or gpus >= e.world_size else "cpu"
                steps.append(Step(f"{a.id}: {e.id} at its {e.world_size} ranks", "check", where, 120,
                                  {"assignment": a.id, "exercises": [e.id], "world_size": e.world_size}))
        for mistake in [m for m in proven if m.assignment == a.id][: 1 if quick else 2]:
            steps.append(Step(f"{a.id}: mistake {mistake.id}", "mistake", multi, 60,
                              {"assignment": a.id, "exercise": mistake.exercise, "mistake": mistake.id}))
        if not quick:
            for e in a.exercises:
                if checks.get(e.id).measure is not None:
                    steps.append(Step(f"{a.id}: {e.id} measured", "measure", multi, 120,
                                      {"assignment": a.id, "exercise": e.id}))
    notebooks = [a for a in course.assignments][: 1 if quick else None]
    for a in notebooks:
        steps.append(Step(f"notebook {a.id}, top to bottom", "notebook", profile, 240, {"assignment": a.id}))
    return steps


def check_plan(steps: list[Step], gpus: int) -> list[str]:
    """The proof's own bookkeeping: what is wrong with a plan (empty when nothing)."""
    from .course import load_course

    problems = []
    course = load_course()
    covered = {e for s in steps if s.kind == "check" for e in s.args["exercises"]}
    measured = {s.args["exercise"] for s in steps if s.kind == "measure"}
    missing = [e.id for e in course.exercises if e.id not in covered | measured]
    if missing:
        problems.append(f"exercises never checked: {', '.join(missing)}")
    table = {m.id: m for m in mistakes()}
    for s in steps:
        if s.kind != "mistake":
            continue
        row = table.get(s.args["mistake"])
        problem = f"no row {s.args['mistake']!r} in {TABLE.name}" if row is None else row.problem()
        if problem:
            problems.append(f"{s.name}: {problem}")
    if gpus == 1 and any(s.kind in ("check", "mistake", "measure") and s.profile == "gpu" and
                         s.args.get("world_size", 2) > 1 for s in steps):
        problems.append("with one GPU, a multi-rank step is planned on the gpu profile")
    notebooks = {s.args["assignment"] for s in steps if s.kind == "notebook"}
    if notebooks != {a.id for a in course.assignments}:
        problems.append(f"notebooks not run: {sorted({a.id for a in course.assignments} - notebooks)}")
    return problems


def _run_step(step: Step, out: Path) -> Outcome:
    """One step in a child process of its own, killed (with everything it started) when its budget runs out."""
    result = out / "steps" / f"{abs(hash(step.name)):x}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    log = out / "logs" / (step.name.replace(" ", "_").replace(":", "").replace("/", "-")[:80] + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COURSE_PROFILE": step.profile, "COURSE_DATA_DIR": str(out / "data")}
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "autograder.gpuproof_steps", "--step", json.dumps(asdict(step)),
                                 "--result", str(result), "--out", str(out)], stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            proc.wait(timeout=step.budget + 30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop_tree(proc)   # the step's child and everything it started
    seconds = round(time.monotonic() - start, 1)
    try:
        outcome = Outcome(**json.loads(result.read_text()))
    except (OSError, ValueError, TypeError):
        outcome = Outcome(step.name, step.kind, step.profile,
                          "timed out" if seconds >= step.budget + 30 else "failed",
                          message=f"the step ended without a result after {seconds:.0f} s (see its log)")
    outcome.seconds, outcome.log = seconds, str(log.relative_to(out))
    return outcome


def run(out: str | Path, *, gpus: int | None = None, profile: str | None = None, quick: bool = False,
        dry_run: bool = False) -> dict:
    """Plan and (unless dry_run) run the proof; write out/summary.json; return the summary."""
    from .policy import visible_gpu_count

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpu_count() if gpus is None else gpus
    profile = profile or ("gpu" if gpus >= 1 else "cpu")
    steps = plan(gpus, profile=profile, quick=quick)
    problems = check_plan(steps, gpus) if not quick else []
    summary: dict = {"gpus": gpus, "profile": profile, "budget_seconds": sum(s.budget for s in steps),
                     "plan_problems": problems, "steps": []}
    deadline = time.monotonic() + TOTAL_BUDGET * (3 if profile == "cpu" else 1)
    for step in steps:
        if dry_run:
            outcome = Outcome(step.name, step.kind, step.profile, "planned")
        elif time.monotonic() + 10 > deadline:
            outcome = Outcome(step.name, step.kind, step.profile, "skipped", message="the proof's time is up")
        else:
            outcome = _run_step(step, out)
        summary["steps"].append(asdict(outcome))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        if not dry_run:
            print(f"  {outcome.status:<10} {outcome.seconds:>5.0f} s  [{outcome.profile}] {outcome.name}", flush=True)
    counts: dict[str, int] = {}
    for s in summary["steps"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    summary["counts"] = counts
    summary["passed"] = not problems and all(s["status"] in ("passed", "planned") or
                                             (s["status"] == "skipped" and s["kind"] in ("data", "measure"))
                                             for s in summary["steps"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def one_screen(summary: dict) -> str:
    """The summary as a short table: every step that did not pass, the figures, and the totals."""
    lines = [f"gpu-proof: {summary['gpus']} GPU(s), profile {summary['profile']}"]
    lines += [f"  plan problem: {p}" for p in summary["plan_problems"]]
    for s in summary["steps"]:
        if s["status"] not in ("passed", "planned"):
            lines.append(f"  {s['status'].upper():<10} [{s['profile']}] {s['name']}: {s['message'][:110]}")
        for key, figure in s["figures"].items():
            if key in ("speedup", "memory"):
                lines.append(f"  {'figure':<10} [{s['profile']}] {s['name']}: {_figure_text(key, figure)}")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    lines.append(f"{'PASSED' if summary['passed'] else 'FAILED'}: {counts}")
    return "\n".join(lines)


def _figure_text(key: str, figure: Any) -> str:
    if isinstance(figure, dict):
        wanted = [k for k in ("measured", "ratio", "reference", "threshold", "ideal", "decision") if k in figure]
        return ", ".join(f"{k} {figure[k]:.2f}" if isinstance(figure[k], (int, float)) else f"{k} {figure[k]}"
                         for k in wanted) or json.dumps(figure)[:100]
    return json.dumps(figure)[:100]
