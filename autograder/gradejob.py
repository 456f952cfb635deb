"""Grading one submission: `python -m autograder.gradejob OUT STUDENT ASSIGNMENT NOTEBOOK` (a trusted process).

1. Test cells: the submission's are compared with the released ones; edited, deleted or
   retyped cells are flagged (nbgrader puts the locked ones back anyway).
2. Re-verification: every check call of the source test cells, hidden ones included, runs on
   the submission's %%writefile files with the trusted harness (ranks in sandboxes). These
   verdicts are the grade.
3. nbgrader autograde runs the notebook in a sandbox (autograder/nbrun.py); its test cells
   show the trusted verdicts; its cell scores are compared and any difference flagged.
4. The feedback page: the verdicts, then the notebook made harmless (feedback.py).

Nothing is written outside this job's scratch folders: the result (record and feedback
page) goes to the grading parent as one JSON line on stdout, and the parent validates and
writes it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import cgroups, feedback, sandbox
from .config import course_root
from .launch import stop_tree
from .course import load_course
from .records import MANUAL, Record
from .reverify import reverify
from .trusted import TRUSTED_ENV

RESULT_MARK = "COURSE-GRADE-RESULT "
KERNEL_TIME_LIMIT = 25 * 60      # the whole notebook in nbgrader, seconds
KERNEL_SCRATCH = 1024 * 2**20    # what the notebook may write (a tmpfs)
KERNEL_OUTPUT = 32 * 2**20       # bytes of nbrun's report read back


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def tampered_test_cells(submitted: dict, released: dict) -> list[str]:
    """One flag per released test cell that the submission edited, deleted or turned into another cell type."""
    def test_cells(nb: dict) -> dict[str, dict]:
        return {c["metadata"]["nbgrader"]["grade_id"]: c for c in nb.get("cells", [])
                if isinstance(c, dict) and isinstance(c.get("metadata"), dict)
                and isinstance(c["metadata"].get("nbgrader"), dict) and c["metadata"]["nbgrader"].get("grade_id")}

    mine, theirs = test_cells(submitted), test_cells(released)
    flags = []
    for grade_id, cell in theirs.items():
        if not cell["metadata"]["nbgrader"].get("grade"):
            continue
        got = mine.get(grade_id)
        if got is None:
            flags.append(f"test cell {grade_id} was deleted (put back and run as released)")
        elif got.get("cell_type") != cell.get("cell_type"):
            flags.append(f"test cell {grade_id} was turned into a {got.get('cell_type')} cell (put back and run)")
        elif _source(got).strip() != _source(cell).strip():
            old, new = _source(cell).splitlines(), _source(got).splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            before = old[line] if line < len(old) else "(end of cell)"
            after = new[line] if line < len(new) else "(end of cell)"
            flags.append(f"test cell {grade_id} was edited (put back and run as released): line {line + 1} "
                         f"{before[:80]!r} became {after[:80]!r}")
    return flags


def _kernel_env(trusted: Path, work: Path) -> dict[str, str]:
    return sandbox.clean_env(work, ("CUDA_VISIBLE_DEVICES", "COURSE_TEST_ID", "COURSE_GRADING_SHORTCUTS",
                                    "COURSE_DATA_DIR", "OMP_NUM_THREADS", "COURSE_PROFILE"),
                             COURSE_ROOT=str(course_root()), MPLBACKEND="Agg",
                             **{TRUSTED_ENV: str(trusted), sandbox.MODE_ENV: "off"})


def run_notebook(template: Path, notebook: Path, student: str, assignment: str, trusted: Path,
                 sandboxed: bool) -> dict:
    """nbgrader autograde of the submission, in a sandbox; nbrun's report (untrusted) or {"error": ...}."""
    scratch = Path(tempfile.mkdtemp(prefix="course-kernel-"))
    os.chmod(scratch, 0o755)
    work = scratch / "work"
    work.mkdir()
    inner = [sys.executable, "-I", "-m", "autograder.nbrun", str(template), str(notebook), str(work), student,
             assignment]
    env = _kernel_env(trusted, work)
    groups: list[Path] = []
    if sandboxed:
        root = course_root()
        shown = [template / "gradebook.db", template / "nbgrader_config.py", template / "release", notebook, trusted,
                 root / "course.yaml", root / "release"]   # not template/source: the solutions
        data = os.environ.get("COURSE_DATA_DIR") or str(root / "data")
        shown += [Path(data)] if Path(data).is_dir() else []
        cmd = sandbox.Sandbox(package="kernel").command(inner, env=env, readable=[p for p in shown if p.exists()],
                                                        scratch=work, scratch_bytes=KERNEL_SCRATCH, chdir=work)
        groups = cgroups.make()
    else:
        cmd = inner
    out_path = scratch / "report.json"
    try:
        with open(out_path, "wb") as out:
            proc = sandbox.popen(cmd, groups=groups, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                 env=env, cwd=work if not sandboxed else None)
            try:
                proc.wait(timeout=KERNEL_TIME_LIMIT)
            except subprocess.TimeoutExpired:
                return {"error": f"the notebook did not finish within {KERNEL_TIME_LIMIT // 60} min"}
            finally:
                _kill(proc, groups)
        with open(out_path, "rb") as f:
            text = f.read(KERNEL_OUTPUT + 1)
        if len(text) > KERNEL_OUTPUT:
            return {"error": "the notebook's report was over the size limit"}
        lines = [ln for ln in text.decode(errors="replace").splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": "nbgrader produced no report"}
    except (OSError, ValueError) as exc:
        return {"error": f"nbgrader's report could not be read ({type(exc).__name__})"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _kill(proc: subprocess.Popen, groups: list[Path]) -> None:
    stop_tree(proc)
    cgroups.kill_and_remove(groups)


def grade_one(out: Path, student: str, assignment_id: str, notebook: Path, *, sandboxed: bool) -> dict:
    """{"record": ..., "feedback": html, "verdicts": {call key: verdict}} for one submission."""
    import hashlib

    course = load_course()
    a = course.assignment(assignment_id)
    start = time.monotonic()
    record = Record(student, a.id, hashlib.sha256(notebook.read_bytes()).hexdigest(), "graded", sandboxed=sandboxed)
    try:
        submitted = json.loads(notebook.read_text())
        if not isinstance(submitted, dict) or not isinstance(submitted.get("cells"), list):
            raise ValueError("not a notebook (no cell list)")
    except (OSError, ValueError) as exc:
        record.status, record.flags = MANUAL, [f"{MANUAL}: the submitted file is not a readable notebook ({exc})"]
        return {"record": asdict(record), "feedback": feedback.render(f"{student}: {a.id}", feedback.summary(record, {}),
                                                                    None)}
    template = out / ".template" / a.id      # made by the parent before any job started
    source = json.loads((template / "source" / a.id / a.notebook).read_text())
    released = json.loads((template / "release" / a.id / a.notebook).read_text())
    record.flags += tampered_test_cells(submitted, released)

    checked = reverify(submitted, source, a)
    record.points = {g: r.points for g, r in checked.exercises.items()}
    undecided = [g for g, r in checked.exercises.items() if r.inconclusive]
    if undecided:
        record.status = MANUAL
        record.flags.append(f"{MANUAL}: {', '.join(undecided)} could not be decided on this machine (the code is "
                            f"right, but the machine was too busy or its speed drifted during the measurement: see "
                            f"the feedback for the figures); run course grade again to re-grade")
    with tempfile.TemporaryDirectory(prefix="course-trusted-") as folder:
        os.chmod(folder, 0o755)
        trusted = Path(folder) / "trusted-verdicts.json"
        checked.write(trusted)
        os.chmod(trusted, 0o644)
        report = run_notebook(template, notebook, student, a.id, trusted, sandboxed)
    if "error" in report and not report.get("cells"):
        record.flags.append(f"the notebook could not be run by nbgrader ({str(report['error'])[:200]}): graded from "
                            f"its %%writefile cells only")
    cells = report.get("cells") or {}
    for e in a.exercises:
        if e.grade_id not in cells:
            continue
        try:
            record.cell_points[e.grade_id] = min(max(float(cells[e.grade_id]), 0.0), e.points)
        except (TypeError, ValueError):
            continue
        if record.cell_points[e.grade_id] != record.points[e.grade_id]:
            record.flags.append(f"{e.id}: the notebook cell scored {record.cell_points[e.grade_id]:g} but the trusted "
                                f"check of the %%writefile code gave {record.points[e.grade_id]:g}; the trusted "
                                f"score stands")
    record.seconds = round(time.monotonic() - start, 1)
    verdicts = {g: r.verdicts for g, r in checked.exercises.items()}
    nb = report.get("notebook") if isinstance(report.get("notebook"), dict) else None
    if nb is not None:
        nb = feedback.without_hidden_tests(nb, released, record.points)
    page = feedback.render(f"{student}: {a.id}", feedback.summary(record, verdicts), nb)
    return {"record": asdict(record), "feedback": page, "verdicts": checked.as_json()["verdicts"]}


def main(argv: list[str]) -> int:
    out, student, assignment, notebook = argv
    sandboxed = sandbox.mode() != "off"
    result = grade_one(Path(out), student, assignment, Path(notebook), sandboxed=sandboxed)
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
