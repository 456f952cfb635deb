"""02_torchrun checks: the reference passes every variant; each typical mistake fails with a hint naming it."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import control, solution, stub

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


@pytest.mark.parametrize("exercise, mistake, overrides, words", [
    ("torchrun.env", "local_rank_as_rank", {}, "LOCAL_RANK only numbers the processes on one machine"),
    ("torchrun.env", "local_rank_as_rank", {"world_size": 2, "nnodes": 2}, "LOCAL_RANK"),
    ("torchrun.env", "hardcoded_world_size", {}, "instead of writing a number"),
    ("torchrun.env", "strings_not_ints", {}, "int("),
    ("torchrun.env", "process_group_rank", {}, "must not need a process group"),
    ("torchrun.mean", "sum_not_mean", {}, "divide by the world size"),
    ("torchrun.mean", "mutates_input", {}, "in place"),
    ("torchrun.mean", "no_communication", {}, "dist.all_reduce"),
    ("torchrun.mean", "result_unused", {}, "result is not used"),
    ("torchrun.gather", "no_communication", {}, "dist.all_gather"),
    ("torchrun.gather", "wrong_order", {}, "rank order"),
    ("torchrun.gather", "aliased_buffers", {}, "one tensor n times"),
])
def test_mistake_is_rejected_with_a_hint_that_names_it(exercise, mistake, overrides, words):
    v = run_check(exercise, module=control("torchrun", mistake), **overrides)
    assert not v.passed and v.status == "fail", v.to_text()
    assert words in v.message + " " + v.hint, v.to_text()
