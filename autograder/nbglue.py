"""nbgrader glue: validate source notebooks, run nbgrader commands, regenerate release/ from source/.

nbgrader always works in a scratch course root that holds only the notebooks, so that
files a notebook wrote with %%writefile (solutions!) can never be copied into release/.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from .config import REPO_ROOT, Assignment, ConfigError, Course, course_root
from .course import load_course, require_checks
from .launch import sweep

NBGRADER_CONFIG = REPO_ROOT / "nbgrader_config.py"
NBGRADER_TOKEN = "COURSE_NBGRADER_TOKEN"  # marks every process an nbgrader command starts


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

def _path_with_this_python() -> str:
    """nbgrader runs helpers (alembic, jupyter) by name: they must be this environment's."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def run_nbgrader(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one nbgrader command in a scratch course root; its output comes back, never to our stderr.

    Output goes to a file, not a pipe: a process the notebook left behind would hold a pipe
    open forever. Everything the command started is killed when it returns.
    """
    token = uuid.uuid4().hex
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {}), "PATH": _path_with_this_python(),
                                       NBGRADER_TOKEN: token})
        finally:   # also when interrupted: nbgrader's own children (alembic) would outlive it
            sweep(token, NBGRADER_TOKEN)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise GradingError(f"nbgrader {' '.join(args)} failed:\n{text[-4000:]}")
    return text


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
    require_checks(course, assignment_ids)
    dest = dest or course_root() / "release"
    assignments = _selected(course, assignment_ids)
    for a in assignments:
        validate_source(course, a, course_root())
    root = _scratch_root(course, assignments)
    written = []
    try:
        for a in assignments:
            run_nbgrader(root, "generate_assignment", a.id, "--force")
            target = dest / a.id
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root / "release" / a.id, target)
            written.append(target / a.notebook)
            print(f"released {a.id} -> {target.relative_to(dest.parent) if dest.parent in target.parents else target}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return written
