"""03_concepts checks (local, no torchrun): the notebook's solution passes, its blank fails, each mistake is named."""
from __future__ import annotations

import json
import re

import pytest

from autograder import run_check
from autograder.checks.concepts import close, reference
from autograder.config import course_root
from conftest import require_sandbox

EXERCISES = ["concepts.memory", "concepts.bubble", "concepts.allreduce"]
NOTEBOOK = course_root() / "source" / "03_concepts" / "03_concepts.ipynb"
SOLUTION_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?### END SOLUTION[ \t]*(\n|\Z)", re.S | re.M)


def _notebook_module(tmp_path, *, blank: bool):
    """concepts.py as the source notebook writes it, or as the released notebook does (nbgrader's stub)."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    cell = next(c for c in cells if c["metadata"].get("nbgrader", {}).get("grade_id") == "concepts")
    text = "".join(cell["source"])
    assert text.startswith("%%writefile concepts.py\n")
    text = text.split("\n", 1)[1]
    if blank:   # what nbgrader's ClearSolutions leaves in the student's copy
        text, n = SOLUTION_REGION.subn(r"\1# YOUR CODE HERE\n\1raise NotImplementedError()\n", text)
        assert n == 3
    path = tmp_path / "concepts.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("params", [{}, {"seed": 3}, {"seed": 17, "cases": 60}], ids=["visible", "seed3", "seed17"])
def test_notebook_solution_passes(tmp_path, exercise, params):
    v = run_check(exercise, module=_notebook_module(tmp_path, blank=False), profile="cpu", **params)
    assert v.passed and v.status == "pass", v.to_text()
    assert v.world_size == 0 and "matched" in v.message   # a local check: no ranks launched


@pytest.mark.parametrize("exercise", EXERCISES)
def test_blank_stub_is_not_implemented(tmp_path, exercise):
    v = run_check(exercise, module=_notebook_module(tmp_path, blank=True), profile="cpu")
    assert v.status == "not-implemented" and "NotImplementedError" in v.message, v.to_text()
    assert "YOUR CODE HERE" in v.hint


def test_an_answer_table_from_one_run_fails_the_next(tmp_path):
    """Every call draws new cases from a fresh secret: answers recorded in one run (here: a lookup table of the
    visible cases) cannot pass another run."""
    from autograder.checks.concepts import allreduce

    table = {c: reference.allreduce(*c) for c in allreduce.CASES}
    path = tmp_path / "concepts.py"
    path.write_text(f"TABLE = {table!r}\n\n\ndef ring_allreduce_bytes(n_bytes, world_size):\n"
                    f"    if world_size < 1 or n_bytes < 0:\n        raise ValueError('invalid')\n"
                    f"    return TABLE.get((n_bytes, world_size), 0)\n")
    v = run_check("concepts.allreduce", module=path, profile="cpu")
    assert not v.passed and "expected" in v.message, v.to_text()
    assert run_check("concepts.allreduce", module=path, profile="cpu", cases=0).passed   # the visible table alone


def test_importing_the_graders_reference_fails(tmp_path):
    """A module that calls the grader's own reference formulas: the rank side cannot import them (sandbox)."""
    require_sandbox()
    path = tmp_path / "concepts.py"
    path.write_text("from autograder.checks.concepts import reference\n\n\n"
                    "def training_memory_bytes(*a, **k):\n    return reference.memory(*a, **k)\n\n\n"
                    "def bubble_fraction(**k):\n    return reference.bubble(**k)\n\n\n"
                    "def ring_allreduce_bytes(**k):\n    return reference.allreduce(**k)\n")
    for exercise in EXERCISES:
        v = run_check(exercise, module=path, profile="cpu")
        assert not v.passed and "while importing your module" in v.message and "ModuleNotFoundError" in v.message, \
            v.to_text()


# ---------------------------------------------------------------- the references themselves (no subprocess)

@pytest.mark.parametrize("optimizer, precision, parts", [
    ("adam", "fp32", (4, 4, 8)), ("adam", "mixed", (2, 2, 12)), ("sgd", "fp32", (4, 4, 4)), ("sgd", "mixed", (2, 2, 8)),
])
def test_bytes_per_parameter_match_the_notebook_table(optimizer, precision, parts):
    got = reference.bytes_per_parameter(optimizer, precision)
    assert (got["weights"], got["gradients"], got["optimizer"]) == parts
    row = f"| {precision}, {'Adam' if optimizer == 'adam' else 'SGD with momentum'} | {parts[0]} B | {parts[1]} B |"
    assert row in NOTEBOOK.read_text(), f"the notebook's memory table has no row {row!r}"


def test_zero_stages_per_rank():
    """1.5B parameters, mixed Adam, 8 ranks: the numbers section 6 of the notebook quotes."""
    mem = lambda shard: reference.memory(1_500_000_000, "adam", "mixed", 8, shard)  # noqa: E731
    assert [mem(s) / 1e9 for s in ("none", "zero1", "zero2", "zero3")] == [24.0, 8.25, 5.625, 3.0]
    assert reference.memory(10**6, "adam", "fp32", 1, "zero3") == reference.memory(10**6)


def test_bubble_and_allreduce_edge_cases():
    assert reference.bubble(1, 8) == 0 and reference.bubble(4, 4) == pytest.approx(3 / 7)
    assert reference.allreduce(96, 1) == 0 and reference.allreduce(100, 4) == 150


def test_every_typical_mistake_differs_from_the_reference_and_has_a_hint():
    """A mistake that equals the reference on every visible case could never be named; each needs its hint."""
    from autograder.checks.concepts import allreduce, bubble, memory

    for module, formula, mistakes, calls in [
        (memory, reference.memory, reference.MEMORY_MISTAKES,
         [((n,), dict(optimizer=o, precision=p, world_size=w, shard=s)) for n, o, p, w, s in memory.CASES]),
        (bubble, reference.bubble, reference.BUBBLE_MISTAKES,
         [((), dict(n_stages=p, n_microbatches=m)) for p, m in bubble.CASES]),
        (allreduce, reference.allreduce, reference.ALLREDUCE_MISTAKES,
         [((), dict(n_bytes=n, world_size=w)) for n, w in allreduce.CASES]),
    ]:
        assert set(mistakes) == set(module.HINTS)
        for name, wrong in mistakes.items():
            assert any(not close(wrong(*a, **k), formula(*a, **k)) for a, k in calls), name
