"""Every typical mistake of every exercise (tests/controls/mistakes.toml, read by autograder/controls.py) fails its
check with a message or hint that names it: one table, one test. gpu-proof runs the rows marked gpu_proof."""
from __future__ import annotations

import pytest

from autograder import checks, run_check
from autograder.controls import mistakes
from conftest import require_sandbox

TABLE = mistakes()


def _case(mistake) -> pytest.param:
    launches = not checks.get(mistake.exercise).local   # a torchrun job: seconds, not milliseconds
    return pytest.param(mistake, id=mistake.id, marks=[pytest.mark.slow] if launches else [])


def test_the_table_is_usable():
    """Every row names a check, words to find, and a control file or edits the solution can take; no row twice."""
    assert TABLE and len({m.id for m in TABLE}) == len(TABLE)
    for m in TABLE:
        assert checks.get(m.exercise) and m.words and (m.control is None) != (not m.edits), m
        assert m.problem() is None, (m.id, m.problem())


@pytest.mark.parametrize("mistake", [_case(m) for m in TABLE])
def test_mistake_is_rejected_with_a_hint_that_names_it(mistake, tmp_path):
    if mistake.sandbox:
        require_sandbox()
    v = run_check(mistake.exercise, module=mistake.module(tmp_path), **mistake.overrides)
    assert mistake.missed(v) is None, f"{mistake.missed(v)}\n{v.to_text()}"
