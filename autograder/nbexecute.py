"""Run a source notebook top to bottom as a student would: demos, torchrun launches and plots included.

Not grading mode: the notebook runs with its solutions in a scratch copy of its folder, in a
fresh kernel, and the run is judged as a student would see it: a cell that raises, a kernel that
dies, a cell that runs over its time, or a Python traceback in a cell's printed output all count
as failures. A `!torchrun` launch whose ranks crashed prints their tracebacks (on stdout: IPython's
`!` merges the command's streams) while the cell itself "succeeds". A cell that shows a crash on
purpose (02's fault-tolerance demo) carries the tag SHOWS_TRACEBACK.

Used by `course gpu-proof` and by tests/test_notebooks_run.py.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import course_root

TRACEBACK = re.compile(r"^\s*(\[[^\]]*\]:?\s*)?Traceback \(most recent call last\):", re.MULTILINE)
SHOWS_TRACEBACK = "shows-traceback"


@dataclass
class NotebookRun:
    notebook: str        # its file name
    status: str          # passed | failed | timed out
    seconds: float
    message: str = ""    # what went wrong, one line: the error, or the cell whose stderr holds a traceback


def printed_tracebacks(nb) -> list[str]:
    """The first line of code of every cell whose printed output (stdout or stderr) holds a Python traceback,
    except cells tagged SHOWS_TRACEBACK."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or SHOWS_TRACEBACK in cell.get("metadata", {}).get("tags", []):
            continue
        printed = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        if TRACEBACK.search(printed):
            found.append(next((line for line in cell.source.splitlines() if line.strip()), "<empty cell>")[:80])
    return found


def source_notebook(assignment: str) -> Path:
    return course_root() / "source" / assignment / f"{assignment}.ipynb"


def run_notebook(notebook: Path, *, cell_timeout: float, save_to: Path | None = None) -> NotebookRun:
    """Execute a notebook in a scratch folder (a copy: nothing it writes lands beside the original); the executed
    notebook goes to save_to."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    work = Path(tempfile.mkdtemp(prefix=f"course-run-{notebook.stem}-"))
    started = time.monotonic()
    try:
        shutil.copy(notebook, work)
        nb = nbformat.read(work / notebook.name, as_version=4)
        client = NotebookClient(nb, timeout=int(cell_timeout), kernel_name="python3",
                                resources={"metadata": {"path": str(work)}})
        status, message = "passed", ""
        try:
            client.execute()
        except CellTimeoutError as exc:
            status, message = "timed out", str(exc).splitlines()[0][:300]
        except (CellExecutionError, DeadKernelError) as exc:
            status, message = "failed", str(exc).strip().splitlines()[-1][:300]
        if status == "passed" and (cells := printed_tracebacks(nb)):
            status, message = "failed", f"a traceback in the output of the cell starting {cells[0]!r}"
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, save_to / notebook.name)
        return NotebookRun(notebook.name, status, round(time.monotonic() - started, 1), message)
    finally:
        shutil.rmtree(work, ignore_errors=True)
