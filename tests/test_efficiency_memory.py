"""09_efficiency: efficiency.checkpointing (gloo, CPU ranks): the notebook's reference passes with a measured saving,
nothing checkpointed and reentrant checkpointing fail with hints naming them."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import control


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 1, "blocks": 6}, {"world_size": 3, "seed": 2}])
def test_checkpointing_reference_keeps_the_gradients_and_saves_memory(graded_assignment, overrides):
    """The source notebook's calls, from the session's graded notebook (conftest): not launched again here."""
    v = graded_assignment("09_efficiency").verdict("efficiency.checkpointing", **overrides)
    assert v.passed, v.to_text()
    assert "same gradients" in v.message and "VmHWM" in v.message, v.to_text()
    memory = v.details["memory"]["bytes"]
    assert all(m < p / 2 for m, p in zip(memory["yours"], memory["plain"])), memory


@pytest.mark.slow
@pytest.mark.parametrize("name,words", [
    ("checkpointing_nothing", ["same gradients, but", "Nothing (or too little) is checkpointed"]),
    ("checkpointing_reentrant", ["use_reentrant=False"]),
])
def test_checkpointing_mistakes_are_named(name, words):
    v = run_check("efficiency.checkpointing", module=control("efficiency", name))
    assert not v.passed, v.to_text()
    assert all(w in v.message + " " + v.hint for w in words), v.to_text()
