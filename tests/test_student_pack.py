"""`course student-pack`: what students get holds no solution, no hidden test and no reference, and its
self-checks (expected values shipped as data) pass the source solutions and fail the blank stubs.

The pack's own harness runs in a subprocess with the pack first on sys.path (its ranks run the
pack's rank side: session.Job puts the harness's own package first). Checks that measure
speed or memory use the learner's own baseline in the pack and are not run here (they are
tested in their assignments' files); every other exercise is.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.course import load_course
from conftest import solution, stub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    from autograder.studentpack import make

    return make(tmp_path_factory.mktemp("student") / "pack")


def _measured() -> set[str]:
    from autograder import checks

    return {e.id for e in load_course().exercises if checks.get(e.id).measure is not None}


def test_no_solution_hidden_test_or_reference_is_in_the_pack(pack):
    from autograder.studentpack import INSTRUCTOR_ONLY, search

    assert not list(pack.rglob("reference.py")) and not (pack / "source").exists()
    assert not any((pack / "autograder" / name).exists() for name in INSTRUCTOR_ONLY)
    assert search(pack) == []
    assert list((pack / "autograder" / "public").glob("*.bin"))


def test_the_search_finds_a_leak(pack, tmp_path):
    """A search that cannot fail proves nothing: a solution line copied into a pack file is found and named."""
    from autograder.studentpack import search

    leaky = tmp_path / "leaky"
    shutil.copytree(pack / "release" / "02_torchrun", leaky / "release" / "02_torchrun")
    line = next(ln.strip() for ln in solution("02_torchrun", "torchrun_basics.py").read_text().splitlines()
                if "all_gather(" in ln)
    (leaky / "notes.md").write_text(f"my answer: {line}\n")
    assert any("notes.md" in leak and "solution" in leak for leak in search(leaky))


def _pack_course(pack: Path, folder: Path) -> subprocess.CompletedProcess:
    # Without the sandbox, scratch.bucketed (its file is shared with three other exercises) rests on correctness
    # and does not measure its overlap: no speed is measured beside other tests.
    env = {**os.environ, "PYTHONPATH": str(pack), "COURSE_ROOT": str(pack), "COURSE_SANDBOX": "off"}
    return subprocess.run([sys.executable, "-m", "autograder.cli", "check-all", str(folder)], cwd=pack, env=env,
                          capture_output=True, text=True, timeout=1500)


def _files(tmp_path: Path, make_path) -> Path:
    """Each graded assignment's exercise files (except the measured scripts) in <folder>/<assignment>/."""
    measured = _measured()
    folder = tmp_path / "work"
    for a in load_course().assignments:
        for e in a.exercises:
            if e.id not in measured:
                target = folder / a.id / e.module
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(make_path(a.id, e.module), target)
    return folder


def test_the_packs_self_checks_pass_the_solutions(pack, tmp_path):
    proc = _pack_course(pack, _files(tmp_path, solution))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1].startswith(f"{_present()} of {_present()}")


def _present() -> int:
    """How many exercises check-all finds: every exercise whose file _files() wrote (a measured exercise too,
    when its file is shared with one that is not)."""
    course, measured = load_course(), _measured()
    written = {(a.id, e.module) for a in course.assignments for e in a.exercises if e.id not in measured}
    return len([e for a in course.assignments for e in a.exercises if (a.id, e.module) in written])


def test_the_packs_self_checks_fail_the_stubs(pack, tmp_path):
    proc = _pack_course(pack, _files(tmp_path, stub))
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].startswith("0 of ")
    assert "NotImplementedError" in proc.stdout


def test_a_variant_without_shipped_values_says_so(pack, tmp_path):
    module = tmp_path / "torchrun_basics.py"
    module.write_text(solution("02_torchrun", "torchrun_basics.py").read_text())
    env = {**os.environ, "PYTHONPATH": str(pack), "COURSE_ROOT": str(pack)}
    proc = subprocess.run([sys.executable, "-m", "autograder.cli", "check", "torchrun.mean", "--module", str(module),
                           "--param", "shape=[7]", "--json"], cwd=pack, env=env, capture_output=True, text=True)
    verdict = json.loads(proc.stdout)
    assert proc.returncode == 2 and "expected values for torchrun.mean only with" in verdict["message"]
