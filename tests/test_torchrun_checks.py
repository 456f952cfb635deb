"""02_torchrun checks: the reference passes every variant; each typical mistake fails with a hint naming it."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import solution, stub

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("exercise, overrides", [
    ("torchrun.env", {}),
    ("torchrun.env", {"world_size": 3}),
    ("torchrun.env", {"world_size": 2, "nnodes": 2}),   # two agents: RANK and LOCAL_RANK differ
    ("torchrun.mean", {"world_size": 1}),
    ("torchrun.mean", {"world_size": 3, "seed": 4, "shape": [5], "dtype": "float64"}),
    ("torchrun.gather", {"world_size": 3, "seed": 2}),
])
def test_reference_passes(exercise, overrides):
    v = run_check(exercise, module=solution("02_torchrun", "torchrun_basics.py"), **overrides)
    assert v.passed, v.to_text()


@pytest.mark.parametrize("exercise", ["torchrun.env", "torchrun.mean", "torchrun.gather"])
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=stub("02_torchrun", "torchrun_basics.py"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message
    assert "YOUR CODE HERE" in v.hint

