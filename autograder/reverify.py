"""Out-of-kernel re-verification: check the learner's %%writefile cells with the trusted harness.

Student code runs in the same kernel as the test cells, so the kernel's verdicts are not
evidence. Before nbgrader runs the notebook, the grader extracts the %%writefile cells from
the submitted JSON (without executing anything), runs every check call of the source test
cells (hidden ones included) on them, and keeps these trusted verdicts. The kernel's check()
may reuse one (trusted.py) only while the files it sees are the files that were verified;
the trusted score is the grade, and a cell that disagrees is flagged (gradejob.grade_one).
"""
from __future__ import annotations

import ast
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import cell_source, writefile_cells  # noqa: F401  (writefile_cells: re-exported)
from .config import Assignment, grading_shortcuts
from .harness import VerdictCache, run_check
from .trusted import call_key, digest
from .verdict import Verdict


HIDDEN = re.compile(r"^\s*### BEGIN HIDDEN TESTS\s*$(.*?)^\s*### END HIDDEN TESTS\s*$", re.S | re.M)


@dataclass(frozen=True)
class CheckCall:
    exercise: str
    overrides: dict[str, Any]
    hidden: bool        # written between ### BEGIN/END HIDDEN TESTS (graded, not in the student's copy)


def check_calls(notebook: dict, grade_id: str) -> list[CheckCall]:
    """The check("id", **literal_kwargs) calls of a test cell, hidden tests included (source notebook)."""
    for cell in notebook.get("cells", []):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") != grade_id:
            continue
        source = cell_source(cell)
        hidden_lines = {source[:m.start(1)].count("\n") + i for m in HIDDEN.finditer(source)
                        for i in range(m[1].count("\n") + 1)}
        code = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())
        calls = []
        for node in ast.walk(ast.parse(code)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "check"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                calls.append(CheckCall(node.args[0].value, {k.arg: ast.literal_eval(k.value) for k in node.keywords},
                                       node.lineno - 1 in hidden_lines))
        return sorted(calls, key=lambda c: c.hidden)   # visible calls first, as the cell runs them
    raise KeyError(f"no test cell with grade_id {grade_id!r}")


@dataclass
class ExerciseResult:
    grade_id: str
    points: float          # trusted points: all the cell's checks passed, or 0
    max_points: float
    verdicts: list[Verdict] = field(default_factory=list)   # every call's Verdict, in the cell's order

    @property
    def inconclusive(self) -> bool:
        """A measurement could not decide on this machine (never a fail): the submission needs a re-run."""
        return any(v.status == "inconclusive" for v in self.verdicts)


@dataclass
class Reverification:
    exercises: dict[str, ExerciseResult]
    files: dict[str, str]                    # name -> sha256 of the verified content
    verdicts: dict[str, Verdict]             # call_key -> Verdict

    def as_json(self) -> dict:
        """{"files": ..., "verdicts": {call key: the Verdict as a dict}}: what trusted.py reads in the kernel."""
        return {"files": self.files, "verdicts": {k: json.loads(v.to_json()) for k, v in self.verdicts.items()}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json()))


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
            for call in check_calls(source, exercise.grade_id):
                verdict = run_check(call.exercise, cwd=tmp, cache=cache, hidden=call.hidden, **call.overrides)
                verdicts[call_key(call.exercise, call.overrides)] = verdict
                result.verdicts.append(verdict)
                if not verdict.passed:  # like the test cell, stop at the first failing call
                    result.points = 0.0
                    break
            results[exercise.grade_id] = result
    return Reverification(results, {n: digest(t) for n, t in files.items()}, verdicts)
