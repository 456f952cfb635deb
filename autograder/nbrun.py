"""Inside the grading sandbox: nbgrader autograde of one submission, the results printed as one JSON line.

    python -I -m autograder.nbrun TEMPLATE NOTEBOOK WORK STUDENT ASSIGNMENT

TEMPLATE is the generated nbgrader course root (read-only here), NOTEBOOK the submission
(read-only), WORK a size-capped tmpfs: the only place the notebook's code can write. The
notebook runs in a kernel in this sandbox; its test cells show the verdicts the trusted
re-verification established (autograder.trusted). What this prints is untrusted data for
the grader (the student's code ran in here): cell scores, the autograded notebook with its
outputs cut to size, and the tail of nbgrader's log.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

OUTPUT_BYTES = 200_000      # per output of a cell (text or image), before the grader sanitises again
NOTEBOOK_BYTES = 8 * 2**20  # the autograded notebook as printed here


def _cut(notebook: dict) -> dict:
    """Every output cut to OUTPUT_BYTES; outputs dropped from the end once the notebook exceeds NOTEBOOK_BYTES."""
    total = 0
    for cell in notebook.get("cells", []):
        kept = []
        for output in cell.get("outputs", []) or []:
            text = json.dumps(output)
            if len(text) > OUTPUT_BYTES:
                output = {"output_type": "stream", "name": "stdout",
                          "text": f"[output of {len(text):,} bytes removed: over the size limit]\n"}
                text = json.dumps(output)
            total += len(text)
            if total > NOTEBOOK_BYTES:
                output = {"output_type": "stream", "name": "stdout", "text": "[output removed: notebook too large]\n"}
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return notebook


def _cell_scores(gradebook: Path, notebook: str, student: str, assignment: str) -> dict[str, float]:
    """{grade_id: score} of the autograded test cells, from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{gradebook}") as gb:
        cells = [c.name for c in gb.find_notebook(notebook, assignment).grade_cells]
        return {name: float(gb.find_grade(name, notebook, assignment, student).score or 0.0) for name in cells}


def main(template: str, notebook: str, work: str, student: str, assignment: str) -> int:
    root = Path(work) / "course"
    # The template's source/ (the instructor's solutions) is not visible here, and nbgrader needs only its folder.
    shutil.copytree(template, root, ignore=lambda folder, names: ["source"] if Path(folder) == Path(template) else [])
    (root / "source" / assignment).mkdir(parents=True)
    target = root / "submitted" / student / assignment
    target.mkdir(parents=True)
    shutil.copy(notebook, target / Path(notebook).name)
    log = Path(work) / "nbgrader.log"
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", assignment, "--create", "--force",
                               f"--student={student}"], cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT)
    result: dict = {"returncode": done.returncode, "log": log.read_bytes()[-4000:].decode(errors="replace"),
                    "cells": {}, "notebook": None}
    try:
        result["cells"] = _cell_scores(root / "gradebook.db", Path(notebook).stem, student, assignment)
    except Exception as exc:  # noqa: nbgrader's errors are many; the grader reports the missing scores
        result["error"] = f"gradebook: {type(exc).__name__}: {exc}"[:500]
    graded = root / "autograded" / student / assignment / Path(notebook).name
    if graded.is_file():
        try:
            result["notebook"] = _cut(json.loads(graded.read_text()))
        except ValueError as exc:
            result["error"] = f"autograded notebook: {exc}"
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
