"""A small course (one assignment, the torchrun_basics exercises, no demos) for fast grading tests."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
import yaml

from autograder.config import REPO_ROOT

ASSIGNMENT = "mini"
TIME_LIMIT = 20   # seconds per check, start-up included: the honest checks need a few; the corpus's hangs wait it out
SOLUTION_CELL = """%%writefile torchrun_basics.py
import os

import torch
import torch.distributed as dist


def dist_env():
    ### BEGIN SOLUTION
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    ### END SOLUTION


def global_mean(t):
    ### BEGIN SOLUTION
    total = t.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
    ### END SOLUTION


def gather_all(t):
    ### BEGIN SOLUTION
    tensors = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(tensors, t)
    return tensors
    ### END SOLUTION
"""


def _meta(**nbgrader) -> dict:
    return {"nbgrader": {"schema_version": 3, "task": False, **nbgrader}}


def _solution_cell() -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(SOLUTION_CELL)
    cell.metadata = _meta(grade=False, solution=True, locked=False, grade_id="torchrun_basics")
    return cell


def _test_cell(exercise: str, hidden: str = "") -> nbformat.NotebookNode:
    src = f'from autograder import check\ncheck("{exercise}")\n'
    if hidden:
        src += f"### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS\n"
    cell = nbformat.v4.new_code_cell(src)
    cell.metadata = _meta(grade=True, solution=False, locked=True, points=1, grade_id=exercise.replace(".", "_"))
    return cell


def build(root: Path) -> Path:
    """Write course.yaml and source/mini/mini.ipynb under root; returns root."""
    raw = yaml.safe_load((REPO_ROOT / "course.yaml").read_text())
    raw["assignments"] = [{"id": ASSIGNMENT, "notebook": f"{ASSIGNMENT}.ipynb", "graded": True, "exercises": [
        {"id": e, "module": "torchrun_basics.py", "points": 1, "time_limit": TIME_LIMIT}
        for e in ("torchrun.env", "torchrun.mean", "torchrun.gather")]}]
    (root / "source" / ASSIGNMENT).mkdir(parents=True)
    (root / "course.yaml").write_text(yaml.safe_dump(raw))
    intro = nbformat.v4.new_markdown_cell("# Mini assignment\nFill in torchrun_basics.py.")
    nb = nbformat.v4.new_notebook(cells=[
        intro, _solution_cell(),
        _test_cell("torchrun.env", 'check("torchrun.env", world_size=3)'),
        _test_cell("torchrun.mean"),
        _test_cell("torchrun.gather"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    return root


def submission(release_nb: Path, module: str | None = None, extra_cells: list[str] = (),
               edit=None) -> dict:
    """The released notebook with the learner's module replaced and kernel cells appended (before the tests)."""
    nb = json.loads(release_nb.read_text())
    cells = nb["cells"]
    code = next(i for i, c in enumerate(cells) if "".join(c["source"]).startswith("%%writefile"))
    if module is not None:
        cells[code]["source"] = "%%writefile torchrun_basics.py\n" + module
    for k, text in enumerate(extra_cells):
        cell = copy.deepcopy(cells[code])
        cell["metadata"] = {}
        cell["source"] = text
        cell["outputs"], cell["execution_count"] = [], None
        cell.pop("id", None)
        cells.insert(code + 1 + k, cell)
    if edit:
        edit(cells)
    return nb
