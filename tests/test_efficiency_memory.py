"""09_efficiency: efficiency.checkpointing (gloo, CPU ranks): the notebook's reference passes with a measured saving,
nothing checkpointed and reentrant checkpointing fail with hints naming them."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import control, solution


@pytest.mark.slow
@pytest.mark.parametrize("name,words", [
    (None, ["same gradients", "VmHWM"]),
    ("checkpointing_nothing", ["same gradients, but", "Nothing (or too little) is checkpointed"]),
    ("checkpointing_reentrant", ["use_reentrant=False"]),
])
def test_checkpointing_reference_passes_and_mistakes_are_named(name, words):
    module = solution("09_efficiency", "efficiency_parts.py") if name is None else control("efficiency", name)
    v = run_check("efficiency.checkpointing", module=module)
    assert v.passed == (name is None), v.to_text()
    assert all(w in v.message + " " + v.hint for w in words), v.to_text()
    if name is None:
        memory = v.details["memory"]["bytes"]
        assert all(m < p / 2 for m, p in zip(memory["yours"], memory["plain"])), memory
