"""09_efficiency: efficiency.checkpointing (gloo, CPU ranks): the notebook's reference passes with a measured saving
(its mistakes, nothing checkpointed and reentrant checkpointing, are in tests/controls/mistakes.toml)."""
from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 1, "blocks": 6}, {"world_size": 3, "seed": 2}])
def test_checkpointing_reference_keeps_the_gradients_and_saves_memory(graded_assignment, overrides):
    """The source notebook's calls, from the session's graded notebook (conftest): not launched again here."""
    v = graded_assignment("09_efficiency").verdict("efficiency.checkpointing", **overrides)
    assert v.passed, v.to_text()
    assert "same gradients" in v.message and "VmHWM" in v.message, v.to_text()
    memory = v.details["memory"]["bytes"]
    assert all(m < p / 2 for m, p in zip(memory["yours"], memory["plain"])), memory

