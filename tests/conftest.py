"""Shared fixtures: every test proves that no process it started outlives it; expensive artefacts (a graded
assignment) are produced once per test session, whichever pytest-xdist worker asks first, and read by every test
that needs them."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from autograder.launch import carries, processes_with_env, signal_if

CONTROLS = Path(__file__).parent / "controls"
TEST_TAG = "COURSE_TEST_ID"


@pytest.fixture(autouse=True)
def no_process_outlives_the_test():
    """Tag this test's environment; afterwards no process carrying the tag may be alive."""
    tag = uuid.uuid4().hex
    os.environ[TEST_TAG] = tag
    yield
    del os.environ[TEST_TAG]
    deadline = time.monotonic() + 3   # processes exiting right now get 3 s
    while (left := processes_with_env(TEST_TAG, tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = [_describe(pid) for pid in left]
    for pid in left:
        signal_if(pid, signal.SIGKILL, lambda: carries(pid, TEST_TAG, tag))
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
    import atexit
    import shutil
    import tempfile

    from autograder.cells import write_notebook_files

    if (kind, assignment) not in _NOTEBOOK_FILES:
        folder = Path(tempfile.mkdtemp(prefix=f"course-{kind}-{assignment}-"))
        atexit.register(shutil.rmtree, folder, True)   # one per test process: gone when it ends
        _NOTEBOOK_FILES[kind, assignment] = write_notebook_files(kind, assignment, folder)
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


def judge_forged_reply(exercise: str, garbage, world_size: int = 2) -> None:
    """Judge a run whose every rank sent back `garbage`: a forged reply in any shape must be the learner's failure
    (CheckFailed), never an error of the harness, nor a pass."""
    from autograder.checks import Run, Trial, get
    from autograder.outcome import RankOutcome
    from autograder.verdict import CheckFailed

    check = get(exercise)
    trial = Trial.fresh(exercise=exercise, params=dict(check.defaults), world_size=world_size, profile="cpu",
                          thresholds={})
    inputs = check.inputs(trial)
    run = Run(exercise=exercise, world_size=world_size, params=trial.params, thresholds={}, profile="cpu",
              inputs=inputs, ranks=tuple(RankOutcome(rank=r, ok=True, result=garbage) for r in range(world_size)),
              expected=check.expected(trial, inputs) if check.expected else None)
    with pytest.raises(CheckFailed):
        check.judge(run)


def require_sandbox() -> None:
    """Tests of what the sandbox guarantees fail (never skip) where it cannot be made: CI must have it."""
    from autograder import sandbox

    why = sandbox.problem()
    assert why is None, f"the sandbox is required for this test: {why}"


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is as fast, and tests run two at a time (pytest -n 2)."""
    from autograder import checks

    with checks.one_thread():
        yield


# ------------------------------------------------------------------ artefacts made once per test session

@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the other worker waits here while the artefact is being made
        yield


class Artefacts:
    """Folders made once per test session: `folder(name, make)` runs make(folder) the first time any worker asks
    for `name`, and returns the finished folder to every later caller, in any worker."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str, make: Callable[[Path], None]) -> Path:
        folder = self.root / name
        with _locked(self.root / f"{name}.lock"):
            if not (folder / ".done").exists():
                shutil.rmtree(folder, ignore_errors=True)   # a half-made one (its maker failed)
                folder.mkdir()
                make(folder)
                (folder / ".done").touch()
        return folder


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> Artefacts:
    base = tmp_path_factory.getbasetemp()
    # Under pytest-xdist every worker has its own basetemp inside one folder of this session: share that one.
    return Artefacts((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-artefacts")


@dataclass(frozen=True)
class Graded:
    """One submission of one assignment graded through `course grade`: student "solution" (the source's solutions
    handed in as a student would, no hidden tests) or "blank" (the release notebook as shipped)."""
    out: Path
    student: str
    assignment: str
    row: dict

    def verdicts(self) -> dict:
        """call key -> Verdict, as the trusted re-verification found them (autograder.trusted.call_key)."""
        from autograder.records import verdicts_path
        from autograder.verdict import Verdict

        raw = json.loads(verdicts_path(self.out, self.student, self.assignment).read_text())
        return {key: Verdict.from_dict(v) for key, v in raw.items()}

    def verdict(self, exercise: str, **overrides):
        from autograder.trusted import call_key

        return self.verdicts()[call_key(exercise, overrides)]

    def feedback(self, notebook: str) -> Path:
        return self.out / "feedback" / self.student / self.assignment / notebook.replace(".ipynb", ".html")


def _grade(assignment_id: str, student: str, folder: Path) -> None:
    from autograder import grading
    from autograder.config import course_root
    from autograder.course import load_course
    from autograder.submissions import solved

    a = load_course().assignment(assignment_id)
    subs = folder / "submissions"
    (subs / student / a.id).mkdir(parents=True)
    (subs / student / a.id / a.notebook).write_text(
        solved(course_root() / "source" / a.id / a.notebook) if student == "solution"
        else (course_root() / "release" / a.id / a.notebook).read_text())
    csv_path = grading.grade(subs, out=folder / "grading", assignments=[a.id], progress=False)
    if "run course grade again" in open(csv_path).read():
        # A speed measurement that could not decide (never a fail): what the flag tells the instructor to do.
        grading.grade(subs, out=folder / "grading", assignments=[a.id], progress=False)


@pytest.fixture(scope="session")
def graded_assignment(artefacts) -> Callable[..., Graded]:
    """graded_assignment(assignment_id, student="solution"): that submission graded once per test session (1-4 min;
    each student alone, so that a blank, which times nothing, is never graded in the timing phase)."""
    def get(assignment_id: str, student: str = "solution") -> Graded:
        folder = artefacts.folder(f"graded-{assignment_id}-{student}", lambda f: _grade(assignment_id, student, f))
        out = folder / "grading"
        rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv"))}
        return Graded(out, student, assignment_id, rows[student])
    return get
