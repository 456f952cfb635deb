"""Grading's shortcuts (shared launches, demos not run), the kernel's trusted verdicts, and the switch.

`course bench grading` measures a submission's autograde time without and with them, so
both sides must really be what they claim. Nothing here launches torchrun: launches are
counted, and trusted verdicts are told apart from real checks by the stub they cover.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from autograder import config, harness, notebook
from autograder.config import SHORTCUTS_ENV, course_root
from autograder.cells import writefile_cells
from autograder.course import load_course
from autograder.reverify import Reverification, reverify
from autograder.trusted import TRUSTED_ENV, call_key
from autograder.verdict import Verdict
from conftest import stub

STUB = stub("02_torchrun", "torchrun_basics.py").read_text()


@pytest.mark.parametrize("value, on", [(None, True), ("on", True), ("off", False), ("OFF", False), ("0", False)])
def test_switch(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(SHORTCUTS_ENV, raising=False)
    else:
        monkeypatch.setenv(SHORTCUTS_ENV, value)
    assert config.grading_shortcuts() is on


LATER = "print('a file that a later cell writes')\n"


def _trusted(tmp_path: Path, monkeypatch, module_text: str) -> dict:
    """A stub module and a trusted verdict that says it passed, as the grader would hand to the kernel.

    The verified files also hold later.py, which a later %%writefile cell writes: not on disk yet.
    """
    (tmp_path / "torchrun_basics.py").write_text(module_text)
    overrides = {"cwd": str(tmp_path)}
    verdict = Verdict(exercise="torchrun.env", passed=True, message="verified outside the kernel", world_size=2)
    files = {"torchrun_basics.py": module_text, "later.py": LATER}
    Reverification({}, {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
                   {call_key("torchrun.env", overrides): verdict}).write(tmp_path / "trusted.json")
    monkeypatch.setenv(TRUSTED_ENV, str(tmp_path / "trusted.json"))
    return overrides


@pytest.mark.parametrize("shortcuts", ["on", "off"])
def test_while_grading_the_kernel_shows_the_trusted_verdict_and_checks_nothing(tmp_path, monkeypatch, capsys,
                                                                               shortcuts):
    """The stub on disk would fail a real check; the cell shows what re-verification established instead."""
    overrides = _trusted(tmp_path, monkeypatch, STUB)
    monkeypatch.setenv(SHORTCUTS_ENV, shortcuts)
    monkeypatch.setattr(harness, "run_check", lambda *a, **k: pytest.fail("the kernel ran a check while grading"))
    harness.check("torchrun.env", **overrides)
    assert "verified outside the kernel" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["module edited", "other file edited"])
def test_files_that_differ_from_the_verified_ones_are_named(tmp_path, monkeypatch, capsys, change):
    overrides = _trusted(tmp_path, monkeypatch, STUB)
    if change == "module edited":
        (tmp_path / "torchrun_basics.py").write_text(STUB + "\n# edited in the kernel after re-verification\n")
    else:
        (tmp_path / "later.py").write_text(LATER + "import torchrun_basics  # not what was verified\n")
    harness.check("torchrun.env", **overrides)
    out = capsys.readouterr().out
    assert "graded from your %%writefile cells" in out and "verified outside the kernel" in out


def test_a_call_without_a_trusted_verdict_fails_in_the_cell(tmp_path, monkeypatch):
    overrides = _trusted(tmp_path, monkeypatch, STUB)
    with pytest.raises(AssertionError, match="test cell differs"):
        harness.check("torchrun.env", world_size=7, **overrides)


@pytest.fixture
def ipython(tmp_path, monkeypatch):
    """A real IPython shell (no kernel, no history) working in tmp_path."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / ".ipython"))
    monkeypatch.chdir(tmp_path)
    settings = Config()
    settings.HistoryManager.enabled = False
    yield InteractiveShell.instance(config=settings)
    InteractiveShell.clear_instance()


WRITEFILE_CELLS = [
    "%%writefile a.py\nx = 1",              # no final newline: IPython adds one
    "\n  \n%%writefile b.py\ny = 2\n\n",    # leading blank lines are dropped, trailing ones kept
    "%%writefile -a b.py\nz = 3",
    "%%writefile 'c.py'\nw = 4\n",
    "%%writefile d.py\n",                    # an empty body: IPython refuses it and writes nothing
]


def test_verified_files_are_byte_for_byte_what_ipython_writes(ipython, tmp_path):
    """Otherwise no trusted verdict is ever reused, and grading runs every check twice."""
    ran = [ipython.run_cell(source).success for source in WRITEFILE_CELLS]
    assert ran == [True, True, True, True, False]
    files = writefile_cells({"cells": [{"cell_type": "code", "source": s} for s in WRITEFILE_CELLS]})
    assert files == {p.name: p.read_text() for p in tmp_path.glob("*.py")} and len(files) == 3


@pytest.fixture
def counted_launches(monkeypatch):
    """harness._run replaced by one that records each job's exercises and passes them all."""
    launches: list[list[str]] = []

    def fake_run(plan):
        launches.append([c.exercise.id for c in plan.calls])
        return [Verdict(exercise=c.exercise.id, passed=True, message="counted") for c in plan.calls]

    monkeypatch.setattr(harness, "_run", fake_run)
    return launches


@pytest.mark.parametrize("shortcuts", ["on", "off"])
def test_reverification_shares_launches_only_with_shortcuts(counted_launches, monkeypatch, shortcuts):
    """02_torchrun's test cells make 8 check calls over one module: fewer launches when they share."""
    monkeypatch.setenv(SHORTCUTS_ENV, shortcuts)
    course = load_course()
    a = course.assignment("02_torchrun")
    source = json.loads((course_root() / "source" / a.id / a.notebook).read_text())
    checked = reverify(source, source, a)
    assert all(r.points == r.max_points for r in checked.exercises.values())
    calls = len(checked.verdicts)
    hidden = [v for r in checked.exercises.values() for v in r.verdicts if v.hidden]
    assert hidden and len(hidden) < calls   # the hidden calls are marked as such
    if shortcuts == "off":
        assert all(len(ids) == 1 for ids in counted_launches) and len(counted_launches) == calls
    else:
        # the first call's launch also runs the module's other two exercises, and later calls reuse them
        assert counted_launches[0] == [e.id for e in a.exercises] and len(counted_launches) < calls


class _Shell:
    def __init__(self):
        self.input_transformers_cleanup = []


@pytest.mark.parametrize("nbgrader, shortcuts, skipped", [
    ("autograde", "on", True), ("autograde", "off", False), (None, "on", False)])
def test_demo_launches_are_skipped_only_while_grading_with_shortcuts(monkeypatch, capsys, nbgrader, shortcuts,
                                                                      skipped):
    import IPython

    shell = _Shell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    if nbgrader:
        monkeypatch.setenv("NBGRADER_EXECUTION", nbgrader)
    else:
        monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv(SHORTCUTS_ENV, shortcuts)
    saved = dict(os.environ)  # setup() exports the profile's rank environment
    try:
        notebook.setup()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert (notebook.skip_launches_while_grading in shell.input_transformers_cleanup) is skipped
    assert "Profile: " in capsys.readouterr().out
