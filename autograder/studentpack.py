"""`course student-pack DEST`: the copy students get, with no solutions, no hidden tests and no references.

What it holds: the released notebooks, the package without the instructor's tools and without
any checks/*/reference.py, the data tooling (eurosat/), course.yaml, a README, Makefile,
Dockerfile and docker-compose.yml for students, and the expected values of the public check
calls as data (autograder/public/, see public.py). Before it is written out, the pack is
searched: no line of any source notebook's solution or hidden tests may appear in it.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from . import public
from .cells import cell_source
from .config import REPO_ROOT, course_root
from .course import load_course, require_checks

# The instructor's side of the package: grading, releasing, benchmarking, making this pack.
INSTRUCTOR_ONLY = {"bench.py", "controls.py", "feedback.py", "gpuproof.py", "gpuproof_steps.py", "gradejob.py", "gradepool.py",
                   "grading.py", "guard.py", "install.py", "nbglue.py", "nbrun.py", "records.py", "reverify.py",
                   "slurmtask.py", "studentpack.py", "submissions.py"}
PACK_FILES = REPO_ROOT / "pack"   # README, Makefile, Dockerfile and .gitignore written for students


class PackLeak(RuntimeError):
    """Solution text or a hidden test was found in the pack; the message names the file and the line."""


def _copy_package(dest: Path) -> None:
    src = REPO_ROOT / "autograder"

    def ignore(folder: str, names: list[str]) -> list[str]:
        here = Path(folder)
        return [n for n in names if n == "__pycache__" or n == "public" or n.endswith(".pyc")
                or (here == src and n in INSTRUCTOR_ONLY) or (here.parent.name == "checks" and n == "reference.py")]

    shutil.copytree(src, dest / "autograder", ignore=ignore)
    shutil.copytree(REPO_ROOT / "eurosat", dest / "eurosat", ignore=shutil.ignore_patterns("__pycache__"))


def _public_calls(course) -> list[tuple[str, dict]]:
    """(exercise id, overrides) of every visible test-cell call of the released notebooks, and each default."""
    from .reverify import check_calls

    calls = []
    for a in course.assignments:
        if not a.graded:
            continue
        released = json.loads((course_root() / "release" / a.id / a.notebook).read_text())
        for e in a.exercises:
            calls.append((e.id, {}))
            calls += [(c.exercise, c.overrides) for c in check_calls(released, e.grade_id) if not c.hidden]
    unique = []
    for call in calls:
        if call not in unique:
            unique.append(call)
    return unique


def _write_expected(folder: Path, course) -> int:
    """Inputs and expected values of each public call at each world size, computed once here with a fixed secret."""
    from . import checks, policy
    from .planning import Call, Plan, trial_for

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    profile = policy.choose_profile(course, "cpu")
    for exercise_id, overrides in _public_calls(course):
        check = checks.get(exercise_id)
        if check.measure is not None and check.expected is None:
            continue   # speed and memory alone: measured against the learner's own baseline in the pack
        exercise = course.exercise(exercise_id)
        params = {**check.defaults, **{k: v for k, v in overrides.items()
                                       if k not in ("world_size", "profile", "time_limit", "nnodes", "module")}}
        if check.local:
            sizes = [1]
        elif "world_size" in overrides or exercise.world_size:   # a call's own, or the exercise's (tp.two_d's 4)
            sizes = [int(overrides.get("world_size") or exercise.world_size)]
        else:
            sizes = public.WORLD_SIZES
        for ws in sizes:
            plan = Plan(Path("x.py"), profile, ws, int(overrides.get("nnodes", 1)), (Call(exercise, check, params),), None)
            trial = trial_for(plan, plan.calls[0])
            inputs = check.inputs(trial)
            expected = check.expected(trial, inputs) if check.expected else None
            public.save(folder, exercise_id, ws, {"key": public.key(params, plan.nnodes), "secret": trial.secret,
                                                  "inputs": inputs, "expected": expected})
            n += 1
    return n


MIN_TOKENS = 6   # shorter lines (`return model`, `dist.barrier()`) are vocabulary, not an answer


# Solution lines that the course's own library shows anyway, each with why it decides nothing of the exercise.
SHOWN_BY_THE_LIBRARY = {
    "return correct / total, loss_sum / total":
        "eurosat/train.py's evaluate(), used from notebook 01 on; 04's metrics exercise is the reduction before it",
}


def _decides(line: str) -> bool:
    """Whether a line of a solution says enough to give part of it away: code of MIN_TOKENS tokens or more."""
    return (not line.startswith("#") and line not in SHOWN_BY_THE_LIBRARY
            and len(re.findall(r"\w+|[^\w\s]", line)) >= MIN_TOKENS)


def _secret_lines(course) -> dict[str, str]:
    """Lines a pack must not contain: every non-trivial line of a solution block or a hidden-test block
    (except those the released notebooks show anyway, e.g. a line that also appears in given code)."""
    lines, shown = {}, ""
    for a in course.assignments:
        shown += (course_root() / "release" / a.id / a.notebook).read_text()
    for a in course.assignments:
        source = json.loads((course_root() / "source" / a.id / a.notebook).read_text())
        for cell in source.get("cells", []):
            text, inside = cell_source(cell), None
            for line in text.splitlines():
                marker = line.strip()
                if marker in ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS"):
                    inside = marker
                elif marker in ("### END SOLUTION", "### END HIDDEN TESTS"):
                    inside = None
                elif inside and _decides(marker) and json.dumps(marker)[1:-1] not in shown:
                    lines[marker] = f"{a.id} ({'solution' if 'SOLUTION' in inside else 'hidden test'})"
    return lines


def search(pack: Path, course=None) -> list[str]:
    """Every leak in the pack: 'file: line (where it comes from)'; empty when there is none."""
    course = course or load_course()
    secret = _secret_lines(course)
    leaks = []
    for path in sorted(pack.rglob("*")):
        if not path.is_file() or path.suffix in (".bin", ".png", ".pyc"):
            continue
        if path.name == "reference.py":
            leaks.append(f"{path.relative_to(pack)}: a reference implementation")
            continue
        text = path.read_text(errors="replace")
        for line, where in secret.items():
            if line in text:
                leaks.append(f"{path.relative_to(pack)}: {line!r} ({where})")
    return leaks


def make(dest: str | Path) -> Path:
    """Write the student copy to `dest` (which must not exist yet)."""
    course = load_course()
    require_checks(course)
    dest = Path(dest).resolve()
    if dest.exists():
        raise FileExistsError(f"{dest} exists already: choose a new folder")
    with tempfile.TemporaryDirectory(prefix="course-pack-") as tmp:
        pack = Path(tmp) / "pack"
        pack.mkdir()
        shutil.copytree(course_root() / "release", pack / "release",
                        ignore=shutil.ignore_patterns("*.py", "*.json", "checkpoints", ".ipynb_checkpoints"))
        _copy_package(pack)
        for name in ("course.yaml", "requirements.txt", "pyproject.toml", "docker-compose.yml"):
            shutil.copy(course_root() / name if (course_root() / name).exists() else REPO_ROOT / name, pack / name)
        for item in PACK_FILES.iterdir():
            shutil.copy(item, pack / item.name)
        count = _write_expected(pack / "autograder" / "public", course)
        leaks = search(pack, course)
        if leaks:
            raise PackLeak("the student pack would leak: " + "; ".join(leaks[:5]))
        shutil.copytree(pack, dest)
    print(f"student pack written to {dest} ({count} public check variants as data; searched: no solution, "
          f"no hidden test, no reference)")
    return dest
