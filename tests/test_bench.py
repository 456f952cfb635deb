"""`course bench grading` on a small course: the same submission is graded without and with grading's
shortcuts, and both runs must give it full marks (the times are printed, never asserted)."""
from __future__ import annotations

import re

import pytest

import grading_course as gc
from autograder import bench

pytestmark = pytest.mark.slow


def test_grading_bench_gives_full_marks_without_and_with_shortcuts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_ROOT", str(gc.build(tmp_path / "course")))
    assert bench.main(["grading"]) == 0
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if f"{gc.ASSIGNMENT}: one submission" in ln]
    assert re.search(r"\d+ s -> \d+ s \(\d+\.\d\dx faster\)$", line), out  # no "[NOT FULL MARKS: why]"


def test_unknown_benchmark_is_a_usage_error(capsys):
    assert bench.main(["grading", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
