"""nbgrader glue: regenerate release/ from source/, and autograde a folder of submissions into a grades CSV.

nbgrader always works in a scratch course root that holds only the notebooks, so that
files a notebook wrote with %%writefile (solutions!) can never be copied into release/.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT, Assignment, ConfigError, Course, course_root
from .harness import load_course

NBGRADER_CONFIG = REPO_ROOT / "nbgrader_config.py"


class GradingError(Exception):
    """nbgrader failed in a way the instructor must see (message includes nbgrader's output tail)."""


# ------------------------------------------------------------------ metadata

def _nbgrader_cells(notebook: Path) -> list[dict]:
    nb = json.loads(notebook.read_text())
    return [c for c in nb["cells"] if "nbgrader" in c.get("metadata", {})]


def validate_source(course: Course, assignment: Assignment, root: Path) -> None:
    """Refuse a source notebook whose nbgrader metadata would grade wrongly; names notebook and cell."""
    path = root / "source" / assignment.id / assignment.notebook
    seen: set[str] = set()
    graded: dict[str, float] = {}
    for cell in _nbgrader_cells(path):
        meta = cell["metadata"]["nbgrader"]
        grade_id = meta.get("grade_id")
        if not grade_id:
            raise ConfigError(f"{path}: an nbgrader cell has no grade_id")
        if grade_id in seen:
            raise ConfigError(f"{path}: duplicate grade_id {grade_id!r}")
        seen.add(grade_id)
        if meta.get("grade"):
            if not isinstance(meta.get("points"), (int, float)) or meta["points"] <= 0:
                raise ConfigError(f"{path}: test cell {grade_id!r} has no points")
            graded[grade_id] = float(meta["points"])
    for exercise in assignment.exercises:
        if exercise.grade_id not in graded:
            raise ConfigError(f"{path}: no test cell with grade_id {exercise.grade_id!r} for {exercise.id}")
        if graded[exercise.grade_id] != exercise.points:
            raise ConfigError(f"{path}: test cell {exercise.grade_id!r} gives {graded[exercise.grade_id]} points, "
                              f"course.yaml gives {exercise.points}")


# ------------------------------------------------------------------ running nbgrader

def _nbgrader(root: Path, *args: str) -> str:
    """Run one nbgrader command in a scratch course root; its output comes back, never to our stderr."""
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-4000:]}")
    return proc.stdout


def _scratch_root(course: Course, assignments: list[Assignment]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="course-nbgrader-"))
    shutil.copy(NBGRADER_CONFIG, root / "nbgrader_config.py")
    for a in assignments:
        (root / "source" / a.id).mkdir(parents=True)
        shutil.copy(course_root() / "source" / a.id / a.notebook, root / "source" / a.id / a.notebook)
    return root


def _selected(course: Course, ids: list[str] | None) -> list[Assignment]:
    return [course.assignment(i) for i in ids] if ids else list(course.assignments)


def release(assignment_ids: list[str] | None = None, *, dest: Path | None = None) -> list[Path]:
    """Regenerate release/<assignment>/ for the given (default: all) assignments through nbgrader."""
    course = load_course()
    dest = dest or course_root() / "release"
    assignments = _selected(course, assignment_ids)
    for a in assignments:
        validate_source(course, a, course_root())
    root = _scratch_root(course, assignments)
    written = []
    try:
        for a in assignments:
            _nbgrader(root, "generate_assignment", a.id, "--force")
            target = dest / a.id
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / "release" / a.id, target)
            written.append(target / a.notebook)
            print(f"released {a.id} -> {target.relative_to(dest.parent) if dest.parent in target.parents else target}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return written


# ------------------------------------------------------------------ grading

@dataclass(frozen=True)
class GradeRow:
    student: str
    assignment: str
    points: dict[str, float]   # grade_id -> score
    total: float
    max_total: float


def _submissions(folder: Path, assignments: list[Assignment]) -> dict[str, list[Assignment]]:
    """student -> assignments they submitted, from SUBMISSIONS/<student>/<assignment>/<notebook>."""
    found: dict[str, list[Assignment]] = {}
    for student_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for a in assignments:
            if (student_dir / a.id / a.notebook).is_file():
                found.setdefault(student_dir.name, []).append(a)
    if not found:
        raise ConfigError(f"{folder}: no submissions found; expected {folder}/<student>/<assignment>/<notebook>.ipynb")
    return found


def grade(submissions: str | Path, *, out: str | Path = "grading", assignments: list[str] | None = None) -> Path:
    """Autograde SUBMISSIONS/<student>/<assignment>/ with nbgrader; write feedback and out/grades.csv."""
    course = load_course()
    chosen = [a for a in _selected(course, assignments) if a.graded]
    found = _submissions(Path(submissions), chosen)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(NBGRADER_CONFIG, out / "nbgrader_config.py")
    used = {a.id: a for alist in found.values() for a in alist}
    for a in used.values():
        (out / "source" / a.id).mkdir(parents=True, exist_ok=True)
        shutil.copy(course_root() / "source" / a.id / a.notebook, out / "source" / a.id / a.notebook)
        _nbgrader(out, "generate_assignment", a.id, "--force")
    for student, alist in found.items():
        for a in alist:
            target = out / "submitted" / student / a.id
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(submissions) / student / a.id, target)
    rows = []
    for a in used.values():
        _nbgrader(out, "autograde", a.id, "--create", "--force")
        _nbgrader(out, "generate_feedback", a.id, "--force")
        rows += _read_grades(out, a, [s for s, alist in found.items() if a in alist])
    path = out / "grades.csv"
    write_csv(rows, course, path)
    print(f"graded {len(rows)} submission(s); grades: {path}; feedback: {out / 'feedback'}")
    return path


def _read_grades(root: Path, assignment: Assignment, students: list[str]) -> list[GradeRow]:
    from nbgrader.api import Gradebook

    rows = []
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        notebook = Path(assignment.notebook).stem
        for student in students:
            points = {e.grade_id: float(gb.find_grade(e.grade_id, notebook, assignment.id, student).score)
                      for e in assignment.exercises}
            rows.append(GradeRow(student, assignment.id, points, sum(points.values()), assignment.points))
    return rows


def write_csv(rows: list[GradeRow], course: Course, path: Path) -> None:
    """One row per (student, assignment): per-exercise points, total, maximum."""
    grade_ids = [e.grade_id for e in course.exercises]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", *grade_ids, "total", "max"])
        for r in sorted(rows, key=lambda r: (r.student, r.assignment)):
            w.writerow([r.student, r.assignment, *(r.points.get(g, "") for g in grade_ids), r.total, r.max_total])
