"""Shared fixtures: every test proves that no process it started outlives it."""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from autograder.launch import processes_with_env

CONTROLS = Path(__file__).parent / "controls"
TEST_TAG = "COURSE_TEST_ID"


@pytest.fixture(autouse=True)
def no_process_outlives_the_test(request):
    """Tag this test's environment; afterwards no process carrying the tag may be alive."""
    tag = uuid.uuid4().hex
    os.environ[TEST_TAG] = tag
    yield
    del os.environ[TEST_TAG]
    grace = request.node.get_closest_marker("teardown_grace")   # seconds; processes exiting right now get them
    deadline = time.monotonic() + (grace.args[0] if grace else 3)
    while (left := processes_with_env(TEST_TAG, tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = [_describe(pid) for pid in left]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "processes outlived the test:\n" + "\n".join(described)


def _describe(pid: int) -> str:
    """pid, state, parent and command line of a process, for a failure message."""
    try:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
        return f"  {pid} state {status.get('State', '?')}, parent {status.get('PPid', '?')}: {cmdline}"
    except OSError:
        return f"  {pid} (gone)"


def control(area: str, name: str) -> Path:
    """Path of a negative-control module under tests/controls/<area>/."""
    path = CONTROLS / area / f"{name}.py"
    assert path.is_file(), path
    return path


def spinning_while_idle(script: Path, out: Path) -> Path:
    """`script` with controls/spins_while_idle_tail.py appended (CPU burnt whenever main() is not running), at `out`."""
    out.write_text(script.read_text() + "\n\n" + (CONTROLS / "spins_while_idle_tail.py").read_text())
    return out


_NOTEBOOK_FILES: dict[tuple[str, str], Path] = {}


def _notebook_files(kind: str, assignment: str) -> Path:
    """A folder with every %%writefile file of source/ (kind="source") or release/ (kind="release") <assignment>."""
    import json
    import tempfile

    from autograder.config import course_root
    from autograder.cells import writefile_cells

    if (kind, assignment) not in _NOTEBOOK_FILES:
        folder = Path(tempfile.mkdtemp(prefix=f"course-{kind}-{assignment}-"))
        notebook = course_root() / kind / assignment / f"{assignment}.ipynb"
        for name, text in writefile_cells(json.loads(notebook.read_text())).items():
            (folder / name).write_text(text)
        _NOTEBOOK_FILES[kind, assignment] = folder
    return _NOTEBOOK_FILES[kind, assignment]


def solution(assignment: str, filename: str) -> Path:
    """`filename` as the source notebook's %%writefile cell writes it: the reference solution the course ships."""
    path = _notebook_files("source", assignment) / filename
    assert path.is_file(), f"source/{assignment} writes no {filename}"
    return path


def stub(assignment: str, filename: str) -> Path:
    """`filename` as the released (student) notebook writes it: nbgrader's blank stubs."""
    path = _notebook_files("release", assignment) / filename
    assert path.is_file(), f"release/{assignment} writes no {filename}"
    return path


def require_sandbox() -> None:
    """Tests of what the sandbox guarantees fail (never skip) where it cannot be made: CI must have it."""
    from autograder import sandbox

    why = sandbox.problem()
    assert why is None, f"the sandbox is required for this test: {why}"


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is as fast, and tests run two at a time (pytest -n 2)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
