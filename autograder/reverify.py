"""Out-of-kernel re-verification: check the learner's %%writefile cells with a clean harness.

Student code runs in the same kernel as the test cells, so it could monkeypatch the grader.
Before nbgrader runs the notebook, the grader extracts the %%writefile cells from the
submitted JSON (without executing anything), runs every check call of the source test
cells on them, and keeps these trusted verdicts. The kernel's check() may reuse a trusted
verdict (so grading launches each check once) only while the files it sees are the files
that were verified; the grade compares the cells' scores with the trusted ones.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Assignment, ConfigError, grading_shortcuts, load
from .harness import VerdictCache, run_check
from .verdict import Verdict

TRUSTED_ENV = "COURSE_TRUSTED_VERDICTS"
WRITEFILE = re.compile(r"^%%writefile(?P<append>\s+(-a|--append))?\s+(?P<name>\S+)\s*$")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def writefile_cells(notebook: dict) -> dict[str, str]:
    """{file name: content} as the notebook's %%writefile code cells would leave them (in order).

    Byte for byte what IPython writes: it drops a cell's leading blank lines and ends
    every cell with a newline before the magic sees the body.
    """
    files: dict[str, str] = {}
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        text = _source(cell)
        text = "".join(itertools.dropwhile(str.isspace, text.splitlines(keepends=True)))
        first, _, body = (text if text.endswith("\n") else text + "\n").partition("\n")
        found = WRITEFILE.match(first.strip())
        if not found or not body:
            continue  # not a %%writefile cell, or one IPython refuses (an empty body)
        name = Path(found["name"].strip("'\"")).name  # never outside the folder it is verified in
        files[name] = (files.get(name, "") if found["append"] else "") + body
    return files


def check_calls(notebook: dict, grade_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The check("id", **literal_kwargs) calls of a test cell, hidden tests included (source notebook)."""
    for cell in notebook.get("cells", []):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") != grade_id:
            continue
        code = "\n".join(ln for ln in _source(cell).splitlines() if not ln.lstrip().startswith(("%", "!")))
        calls = []
        for node in ast.walk(ast.parse(code)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "check"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                calls.append((node.args[0].value, {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
        return calls
    raise KeyError(f"no test cell with grade_id {grade_id!r}")


def _digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def call_key(exercise_id: str, overrides: dict[str, Any]) -> str:
    return json.dumps([exercise_id, overrides], sort_keys=True)


@dataclass
class ExerciseResult:
    grade_id: str
    points: float          # trusted points: all the cell's checks passed, or 0
    max_points: float
    failures: list[str] = field(default_factory=list)   # verdict texts of the failing calls


@dataclass
class Reverification:
    exercises: dict[str, ExerciseResult]
    files: dict[str, str]                    # name -> sha256 of the verified content
    verdicts: dict[str, dict]                # call_key -> Verdict as dict

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"files": self.files, "verdicts": self.verdicts}))


def reverify(submission: dict, source: dict, assignment: Assignment) -> Reverification:
    """Run every check call of the assignment's test cells on the submission's %%writefile files."""
    files = writefile_cells(submission)
    results, verdicts = {}, {}
    with tempfile.TemporaryDirectory(prefix="course-reverify-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        cache = VerdictCache() if grading_shortcuts() else None
        for exercise in assignment.exercises:
            result = ExerciseResult(exercise.grade_id, exercise.points, exercise.points)
            for exercise_id, overrides in check_calls(source, exercise.grade_id):
                verdict = run_check(exercise_id, cwd=tmp, cache=cache, **overrides)
                verdicts[call_key(exercise_id, overrides)] = json.loads(verdict.to_json())
                if not verdict.passed:  # like the test cell, stop at the first failing call
                    result.points = 0.0
                    result.failures.append(verdict.to_text())
                    break
            results[exercise.grade_id] = result
    return Reverification(results, {n: _digest(t) for n, t in files.items()}, verdicts)


def trusted_verdict(exercise_id: str, overrides: dict[str, Any], cwd: Path) -> Verdict | None:
    """In the kernel while grading: the trusted verdict for this call, if the files on disk are the verified ones
    (and grading takes its shortcuts).

    The checked module must be there, and every verified file that is there must be
    byte-identical; files that later cells write may be missing yet (a notebook checks
    ddp_parts.py before its %%writefile cell for ddp_train.py has run).
    """
    path = os.environ.get(TRUSTED_ENV)
    if not path or not grading_shortcuts():
        return None
    try:
        trusted = json.loads(Path(path).read_text())
        module = overrides.get("module") or load().exercise(exercise_id).module
        if module not in trusted["files"] or not (cwd / module).is_file():
            return None  # not a verified module, or not written yet: the kernel checks for itself
        for name, digest in trusted["files"].items():
            if (cwd / name).exists() and _digest((cwd / name).read_bytes()) != digest:
                return None
        raw = trusted["verdicts"][call_key(exercise_id, overrides)]
    except (OSError, ValueError, KeyError, ConfigError):
        return None
    return Verdict(**raw)
