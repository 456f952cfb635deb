"""nbgrader path end to end: release/ in sync with source/, metadata validated, source full marks, release zero."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autograder import checks, nbglue
from autograder.submissions import solved
from autograder.config import ConfigError, course_root
from autograder.harness import load_course

COURSE = load_course()
GRADED = [a for a in COURSE.assignments if a.exercises]


@pytest.mark.slow
def test_release_is_in_sync_with_source(tmp_path):
    """Regenerating release/ from source/ changes nothing (CI proves the committed release is current)."""
    nbglue.release(dest=tmp_path)
    for a in COURSE.assignments:
        fresh = json.loads((tmp_path / a.id / a.notebook).read_text())
        committed_path = course_root() / "release" / a.id / a.notebook
        assert committed_path.is_file(), f"{committed_path} missing: run `course release`"
        assert json.loads(committed_path.read_text()) == fresh, f"{a.id}: release/ is stale: run `course release`"
        extra = {p.name for p in (course_root() / "release" / a.id).iterdir()} - {a.notebook}
        assert not extra, f"release/{a.id} holds files nbgrader would not ship: {extra}"


@pytest.mark.parametrize("a", GRADED, ids=lambda a: a.id)
def test_release_notebooks_hide_solutions_and_hidden_tests(a):
    text = (course_root() / "release" / a.id / a.notebook).read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "YOUR CODE HERE" in text


@pytest.mark.parametrize("a", GRADED, ids=lambda a: a.id)
def test_a_solved_submission_keeps_the_released_test_cells(a):
    """What the full-marks tests and `course bench grading` hand in: grading must see no tampered test cell."""
    from autograder.gradejob import tampered_test_cells

    handed_in = json.loads(solved(course_root() / "source" / a.id / a.notebook))
    released = json.loads((course_root() / "release" / a.id / a.notebook).read_text())
    assert "BEGIN HIDDEN TESTS" not in json.dumps(handed_in) and "BEGIN SOLUTION" in json.dumps(handed_in)
    assert tampered_test_cells(handed_in, released) == []


def _with_cell_meta(tmp_path, edit) -> Path:
    a = GRADED[0]
    root = tmp_path / "course"
    shutil.copytree(course_root() / "source" / a.id, root / "source" / a.id)
    path = root / "source" / a.id / a.notebook
    nb = json.loads(path.read_text())
    edit([c["metadata"]["nbgrader"] for c in nb["cells"] if "nbgrader" in c["metadata"]])
    path.write_text(json.dumps(nb))
    return root


def test_duplicate_grade_ids_are_refused(tmp_path):
    def dup(cells):
        graded = [m for m in cells if m.get("grade")]
        graded[1]["grade_id"] = graded[0]["grade_id"]
    root = _with_cell_meta(tmp_path, dup)
    with pytest.raises(ConfigError, match="duplicate grade_id"):
        nbglue.validate_source(COURSE, GRADED[0], root)


def test_test_cell_without_points_is_refused(tmp_path):
    def no_points(cells):
        next(m for m in cells if m.get("grade")).pop("points")
    root = _with_cell_meta(tmp_path, no_points)
    with pytest.raises(ConfigError, match="has no points"):
        nbglue.validate_source(COURSE, GRADED[0], root)


def test_points_must_match_course_yaml(tmp_path):
    def more(cells):
        next(m for m in cells if m.get("grade"))["points"] = 99
    root = _with_cell_meta(tmp_path, more)
    with pytest.raises(ConfigError, match="course.yaml gives"):
        nbglue.validate_source(COURSE, GRADED[0], root)


def _times_speed(a) -> bool:
    """Whether grading the assignment times a speed-up (then never beside other tests; memory is measured beside them)."""
    return any(checks.get(e.id).measures_speed for e in a.exercises)


@pytest.mark.parametrize("a", [pytest.param(a, marks=pytest.mark.timing if _times_speed(a) else pytest.mark.slow)
                               for a in GRADED], ids=lambda a: a.id)
def test_autograde_source_full_marks(graded_assignment, a):
    """The source notebook's solutions, handed in as a student would (no hidden tests), score every point with no
    flag. The graded submission is the session's (conftest): the reference timing tests of 04, 05 and 07 read their
    measured verdicts from it."""
    graded = graded_assignment(a.id)
    for e in a.exercises:
        assert float(graded.row[e.grade_id]) == e.points, (e.id, graded.row)
    assert float(graded.row["total"]) == a.points
    assert graded.row["flags"] == ""   # cells and re-verification agree
    feedback = graded.feedback(a.notebook)
    assert feedback.is_file()
    # Demo launches are not run while grading: no cell of a full-marks submission may fail for want of their output.
    assert "Traceback (most recent call last)" not in feedback.read_text(), f"an error in {feedback}"
    verdicts = graded.verdicts()
    assert verdicts and all(v.passed for v in verdicts.values()), {k: v.status for k, v in verdicts.items()}


@pytest.mark.slow
@pytest.mark.parametrize("a", GRADED, ids=lambda a: a.id)
def test_autograde_release_zero(graded_assignment, a):
    """The release notebook as shipped scores 0 everywhere, with no flag (its stubs fail; nothing is timed, so it is
    graded beside other tests even where the solution's grade times a speed-up)."""
    graded = graded_assignment(a.id, "blank")
    for e in a.exercises:
        assert float(graded.row[e.grade_id]) == 0, (e.id, graded.row)
    assert float(graded.row["total"]) == 0 and graded.row["flags"] == "", graded.row
