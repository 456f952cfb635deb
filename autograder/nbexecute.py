"""Run a source notebook top to bottom as a student would: demos, torchrun launches and plots included.

Not grading mode: the notebook runs with its solutions in a scratch copy of its folder, in a
fresh kernel, and the run is judged as a student would see it: a cell that raises, a kernel that
dies, a cell that runs over its time, or a Python traceback in a cell's printed output all count
as failures. A `!torchrun` launch whose ranks crashed prints their tracebacks (on stdout: IPython's
`!` merges the command's streams) while the cell itself "succeeds". A cell that shows a crash on
purpose (02's fault-tolerance demo) carries the tag SHOWS_TRACEBACK. Every cell runs, whatever an
earlier one did, and every failing cell is reported. A self-check whose speed measurement could
not decide on a busy machine raises "INCONCLUSIVE ..." in its cell, as a student would see it: that
is listed in `undecided`, not counted as a failure (the measurement, not the notebook, could not
decide; the check tests judge the measurements).

Used by `course gpu-proof` and by tests/test_notebooks_run.py.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import course_root

TRACEBACK = re.compile(r"^\s*(\[[^\]]*\]:?\s*)?Traceback \(most recent call last\):", re.MULTILINE)
SHOWS_TRACEBACK = "shows-traceback"
RANK_PREFIX = re.compile(r"^\[[^\]]*\]:?\s?")


@dataclass
class NotebookRun:
    notebook: str        # its file name
    status: str          # passed | failed | timed out
    seconds: float
    message: str = ""    # what went wrong, one line per failing cell
    undecided: list[str] = field(default_factory=list)   # self-checks whose measurement could not decide


def printed_tracebacks(nb) -> list[str]:
    """One line per cell whose printed output (stdout or stderr) holds a Python traceback, except cells tagged
    SHOWS_TRACEBACK: "first line of code: the exception the traceback ends with"."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or SHOWS_TRACEBACK in cell.get("metadata", {}).get("tags", []):
            continue
        printed = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        match = TRACEBACK.search(printed)
        if match:
            first = next((line for line in cell.source.splitlines() if line.strip()), "<empty cell>")[:80]
            found.append(f"{first}: {_raised(printed[match.end():])}")
    return found


def printed_tails(nb, lines: int = 60) -> str:
    """The last `lines` lines each failing cell printed (a printed traceback or a raised error), for a failure
    report: a rank that died by a signal prints no traceback of its own, only torchrun's summary says how it died."""
    tails = []
    for cell in nb.cells:
        if cell.cell_type != "code" or SHOWS_TRACEBACK in cell.get("metadata", {}).get("tags", []):
            continue
        outputs = cell.get("outputs", [])
        printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        if TRACEBACK.search(printed) or any(o.get("output_type") == "error" for o in outputs):
            first = next((line for line in cell.source.splitlines() if line.strip()), "<empty cell>")[:80]
            tails.append(f"--- {first} printed (last {lines} lines):\n" + "\n".join(printed.splitlines()[-lines:]))
    return "\n".join(tails)


def _raised(after_traceback: str) -> str:
    """The exception line that ends a printed traceback (a rank's prefix such as "[rank1]: " removed): the first
    line that is neither indented nor a "File ..." frame."""
    for line in after_traceback.splitlines():
        line = RANK_PREFIX.sub("", line, count=1)
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()[:200] + _root_cause(after_traceback)
    return "a traceback in its output"


def _root_cause(after_traceback: str) -> str:
    """torchrun's summary of the first rank that failed (" (rank 1, exitcode -9: Signal 9 (SIGKILL) ...)"), where
    the traceback is torchrun's ChildFailedError; "" otherwise."""
    found = dict(re.findall(r"^\s*(rank|exitcode|traceback)\s*:\s*(.+)$", after_traceback, re.MULTILINE)[:3])
    if "ChildFailedError" not in after_traceback or not found:
        return ""
    return (f" (rank {found.get('rank', '?').split()[0]}, exitcode {found.get('exitcode', '?').split()[0]}: "
            f"{found.get('traceback', '?')[:120]})")


def source_notebook(assignment: str) -> Path:
    return course_root() / "source" / assignment / f"{assignment}.ipynb"


def cell_errors(nb) -> tuple[list[str], list[str]]:
    """(errors, undecided): one line per cell that raised, "first line of code: error"; the self-checks that
    raised INCONCLUSIVE go to `undecided`."""
    errors, undecided = [], []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") != "error":
                continue
            first = next((line for line in cell.source.splitlines() if line.strip()), "<empty cell>")[:80]
            value = str(output.get("evalue", "")).strip()
            if output.get("ename") == "AssertionError" and value.startswith("INCONCLUSIVE"):
                undecided.append(f"{first}: {value.splitlines()[0][:200]}")
            else:
                errors.append(f"{first}: {output.get('ename')}: {(value.splitlines() or [''])[-1][:200]}")
    return errors, undecided


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
        client = NotebookClient(nb, timeout=int(cell_timeout), kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(work)}})
        status, message = "passed", ""
        try:
            client.execute()
        except CellTimeoutError as exc:
            status, message = "timed out", str(exc).splitlines()[0][:300]
        except (CellExecutionError, DeadKernelError) as exc:
            status, message = "failed", str(exc).strip().splitlines()[-1][:300]
        errors, undecided = cell_errors(nb)
        errors += [f"a traceback printed by {cell}" for cell in printed_tracebacks(nb)]
        if status == "passed" and errors:
            status, message = "failed", "\n".join(errors)
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, save_to / notebook.name)
        return NotebookRun(notebook.name, status, round(time.monotonic() - started, 1), message, undecided)
    finally:
        shutil.rmtree(work, ignore_errors=True)
