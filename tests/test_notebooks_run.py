"""Every notebook, solved (the source without its hidden tests), run top to bottom as a student runs it (demos,
torchrun launches, plots, self-checks) on the cpu profile: no error, no time-out, no traceback in any cell's output
(but where a cell shows one on purpose). Each notebook's time is printed (`pytest -s`).

`make test` runs them in the smoke configuration (COURSE_SMOKE=1: launches train on a few hundred images for one epoch,
self-checks judge correctness without timing; the full-marks grading tests time the same solutions), beside other
tests. `make test-full` (COURSE_TEST_FULL=1) runs the full configuration, the speed-timing notebooks alone."""
import os
from pathlib import Path

import nbformat
import pytest

from autograder import checks
from autograder.config import SMOKE_ENV
from autograder.course import load_course
from autograder.nbexecute import (SHOWS_TRACEBACK, printed_tails, printed_tracebacks, run_notebook,
                                  source_notebook)
from autograder.submissions import solved

CELL_TIMEOUT = 600   # seconds per cell: the longest cells launch a torchrun training
FULL = os.environ.get("COURSE_TEST_FULL") == "1"


def _times_speed(assignment) -> bool:
    """Whether the notebook's self-checks time a speed-up in this configuration (then it runs alone, in the timing
    phase: beside other tests the reference itself misses its line, and the check fails or cannot decide)."""
    return FULL and any(checks.get(e.id).measures_speed for e in assignment.exercises)


@pytest.mark.parametrize("assignment", [
    pytest.param(a.id, marks=pytest.mark.timing if _times_speed(a) else pytest.mark.slow)
    for a in load_course().assignments])
def test_the_notebook_runs_top_to_bottom(assignment, tmp_path, monkeypatch):
    """The source notebook as a student who solved it runs it: every demo, launch, plot and self-check cell, the
    hidden tests aside (the instructor's variants; grading and the check tests run those). Takes 1-3 min for the
    notebooks that train (01, 02, 04-07) in the smoke configuration."""
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    monkeypatch.setenv(SMOKE_ENV, "0" if FULL else "1")
    notebook = tmp_path / "student" / f"{assignment}.ipynb"
    notebook.parent.mkdir()
    notebook.write_text(solved(source_notebook(assignment)))
    run = run_notebook(notebook, cell_timeout=CELL_TIMEOUT, save_to=tmp_path / "executed")
    print(f"\n{assignment}: {run.status} in {run.seconds:.0f} s {run.message}"
          + "".join(f"\n  undecided (busy machine): {u}" for u in run.undecided))
    if run.status == "failed":   # what the failing cells printed, in the CI log (the executed notebook is not kept)
        print(printed_tails(nbformat.read(tmp_path / "executed" / notebook.name, as_version=4)))
    assert run.status == "passed", run


def _notebook(*sources: str, path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(nb, path)
    return path


def test_a_failing_cell_fails_the_run(tmp_path):
    run = run_notebook(_notebook("x = 1", "raise ValueError('no stage for rank 2')", path=tmp_path / "broken.ipynb"),
                       cell_timeout=60)
    assert run.status == "failed" and "no stage for rank 2" in run.message, run


def test_every_failing_cell_is_reported_and_an_undecided_measurement_is_not_a_failure(tmp_path):
    undecided = "raise AssertionError('INCONCLUSIVE ddp.train [2 ranks, cpu]: the machine is too busy')"
    run = run_notebook(_notebook(undecided, "x = 1", path=tmp_path / "busy.ipynb"), cell_timeout=60)
    assert run.status == "passed" and len(run.undecided) == 1 and "too busy" in run.undecided[0], run
    failing = "raise AssertionError('FAIL ddp.train [2 ranks, cpu]: 1.0x')"
    run = run_notebook(_notebook(failing, undecided, "1 / 0", path=tmp_path / "two.ipynb"), cell_timeout=60)
    assert run.status == "failed" and "FAIL ddp.train" in run.message and "ZeroDivisionError" in run.message, run


def test_a_printed_traceback_fails_a_run_whose_cells_all_succeeded(tmp_path):
    """What a `!torchrun` launch shows when its ranks crash: the cell itself returns normally."""
    crashed = "print('[rank1]: Traceback (most recent call last):\\n  File \"train.py\"')"
    run = run_notebook(_notebook("print('hello')", crashed, path=tmp_path / "crashed.ipynb"), cell_timeout=60,
                       save_to=tmp_path / "executed")
    assert run.status == "failed" and "[rank1]" in run.message, run
    tails = printed_tails(nbformat.read(tmp_path / "executed" / "crashed.ipynb", as_version=4))
    assert 'File "train.py"' in tails and "hello" not in tails, tails   # the failing cell's output, only its
    fine = run_notebook(_notebook("import sys\nprint('a warning', file=sys.stderr)", path=tmp_path / "ok.ipynb"),
                        cell_timeout=60)
    assert fine.status == "passed", fine


def test_tracebacks_count_in_printed_output_unless_the_cell_shows_one_on_purpose():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("!torchrun demo.py")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="all ranks finished\n")]
    assert printed_tracebacks(nb) == []
    nb.cells[0].outputs.append(nbformat.v4.new_output("stream", name="stdout", text="[rank0]:[W] warn\n"
                                                      "[rank0]: Traceback (most recent call last):\n"
                                                      '[rank0]:   File "demo.py", line 3, in <module>\n'
                                                      "[rank0]:     dist.barrier()\n"
                                                      "[rank0]: RuntimeError: Connection closed by peer\n"))
    assert printed_tracebacks(nb) == ["!torchrun demo.py: RuntimeError: Connection closed by peer"]
    nb.cells[0].metadata["tags"] = [SHOWS_TRACEBACK]   # 02's fault-tolerance demo: a crash on purpose
    assert printed_tracebacks(nb) == []


def test_a_rank_killed_by_a_signal_is_named_from_torchruns_summary():
    """A rank that dies by a signal prints no traceback of its own: only torchrun's ChildFailedError does, and its
    summary says which rank died and how."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("!torchrun train.py")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text=(
        "Traceback (most recent call last):\n  File \"torchrun\", line 8, in <module>\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-05_14:02:11\n"
        "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 4242)\n  error_file: <N/A>\n"
        "  traceback : Signal 9 (SIGKILL) received by PID 4242\n"))]
    assert printed_tracebacks(nb) == ["!torchrun train.py: torch.distributed.elastic.multiprocessing.errors."
                                      "ChildFailedError: (rank 1, exitcode -9: Signal 9 (SIGKILL) received by PID 4242)"]
