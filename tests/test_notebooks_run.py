"""Every source notebook, run top to bottom as a student runs it (demos, torchrun launches, plots), on the cpu
profile: no error, no time-out, no traceback in any cell's output (but where a cell shows one on purpose). Each notebook's time is printed (`pytest -s`)."""
import json
from pathlib import Path

import nbformat
import pytest

from autograder.course import load_course
from autograder.nbexecute import SHOWS_TRACEBACK, printed_tracebacks, run_notebook, source_notebook

CELL_TIMEOUT = 600   # seconds per cell: the longest cells launch a torchrun training


@pytest.mark.slow
@pytest.mark.parametrize("assignment", [a.id for a in load_course().assignments])
def test_the_notebook_runs_top_to_bottom(assignment, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    run = run_notebook(source_notebook(assignment), cell_timeout=CELL_TIMEOUT, save_to=tmp_path)
    print(f"\n{assignment}: {run.status} in {run.seconds:.0f} s {run.message}")
    assert run.status == "passed", run


def _notebook(*sources: str, path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def test_a_failing_cell_fails_the_run(tmp_path):
    run = run_notebook(_notebook("x = 1", "raise ValueError('no stage for rank 2')", path=tmp_path / "broken.ipynb"),
                       cell_timeout=60)
    assert run.status == "failed" and "no stage for rank 2" in run.message, run


def test_a_printed_traceback_fails_a_run_whose_cells_all_succeeded(tmp_path):
    """What a `!torchrun` launch shows when its ranks crash: the cell itself returns normally."""
    crashed = "print('[rank1]: Traceback (most recent call last):\\n  File \"train.py\"')"
    run = run_notebook(_notebook("print('hello')", crashed, path=tmp_path / "crashed.ipynb"), cell_timeout=60)
    assert run.status == "failed" and "[rank1]" in run.message, run
    fine = run_notebook(_notebook("import sys\nprint('a warning', file=sys.stderr)", path=tmp_path / "ok.ipynb"),
                        cell_timeout=60)
    assert fine.status == "passed", fine


def test_tracebacks_count_in_printed_output_unless_the_cell_shows_one_on_purpose():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("!torchrun demo.py")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="all ranks finished\n")]
    assert printed_tracebacks(nb) == []
    nb.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="[rank0]:[W] warn\n"
                                                      "Traceback (most recent call last):\n"))
    assert printed_tracebacks(nb) == ["!torchrun demo.py"]
    nb.cells[0].metadata["tags"] = [SHOWS_TRACEBACK]   # 02's fault-tolerance demo: a crash on purpose
    assert printed_tracebacks(nb) == []
