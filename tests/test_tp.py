"""10_tensor_parallel checks: the notebook's reference passes at 1, 2 and 4 ranks (and 2D on its 2 x 2 mesh), the
blank stubs are not implemented, a correct design the notebook allows passes, forged replies fail; the typical
mistakes are rows of tests/controls/mistakes.toml (tests/test_mistakes.py).

Cost: the graded calls (2 and 4 ranks, the hidden variants, 2D) are read from the session's full-marks grade of the
notebook; only a world of one launches here (layers, block and dtensor as companions in one launch).
"""
from __future__ import annotations

import pytest

from autograder import run_check
from autograder.harness import VerdictCache
from conftest import control, judge_forged_reply, solution, stub

SHARED = ("tp.layers", "tp.block", "tp.dtensor")
EXERCISES = SHARED + ("tp.two_d",)


def _reference():
    return solution("10_tensor_parallel", "tp_parts.py")


# The notebook's test cells, as graded (their hidden variants included): read from the session's full-marks grade.
GRADED_CALLS = [("tp.layers", {}), ("tp.layers", {"world_size": 4}), ("tp.block", {}),
                ("tp.block", {"width": 96, "bias": False}), ("tp.dtensor", {}), ("tp.dtensor", {"world_size": 4}),
                ("tp.two_d", {})]


@pytest.mark.slow
def test_the_graded_reference_passes_every_call_with_its_evidence(graded_assignment):
    graded = graded_assignment("10_tensor_parallel")
    for exercise, overrides in GRADED_CALLS:
        v = graded.verdict(exercise, **overrides)
        assert v.passed and v.status == "pass", (exercise, overrides, v.to_text())
    block = graded.verdict("tp.block")
    assert "x the all-reduces of the activations" in block.message, block.message   # CI has the sandbox
    memory = graded.verdict("tp.two_d").details["memory"]
    assert max(memory["param_bytes"]) <= 1.1 * memory["ideal"] < 0.5 * memory["whole"], memory


@pytest.mark.slow
def test_reference_passes_on_one_rank():
    """layers, block and dtensor in one launch (what the grade does not run: a world of one)."""
    cache = VerdictCache()
    for exercise in SHARED:
        v = run_check(exercise, module=_reference(), world_size=1, cache=cache)
        assert v.passed and v.status == "pass", v.to_text()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=stub("10_tensor_parallel", "tp_parts.py"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message, v.to_text()


@pytest.mark.slow
@pytest.mark.parametrize("exercise", ["tp.layers", "tp.block"])
def test_a_correct_design_the_notebook_allows_passes(exercise):
    """A weight kept transposed, and the row layer's bias on rank 0 alone, added before the sum: both correct."""
    v = run_check(exercise, module=control("tp", "accepted_transposed_weight_bias_on_rank0"))
    assert v.passed, v.to_text()


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("garbage", [None, {}, "ok", {"column": None, "row": 1},
                                     {"shape": [1], "out": None, "params": {"a": 1}, "grads": "x", "heads": 3,
                                      "final": [], "losses": None, "param_bytes": "y"}])
def test_results_the_judge_cannot_read_fail_the_check(exercise, garbage):
    """A forged reply in any shape is the learner's failure, never an error of the harness (nor a pass)."""
    judge_forged_reply(exercise, garbage, world_size=4 if exercise == "tp.two_d" else 2)


def test_the_ideal_2d_bytes_count_the_split_layers_in_quarters_and_the_rest_in_halves():
    import torch

    from autograder.checks.tp.two_d import ideal_bytes

    state = {"blocks.0.attn.qkv.weight": torch.zeros(12, 4), "blocks.0.attn.qkv.bias": torch.zeros(12),
             "blocks.0.attn.proj.weight": torch.zeros(4, 4), "blocks.0.attn.proj.bias": torch.zeros(4),
             "head.weight": torch.zeros(10, 4), "pos_embed": torch.zeros(1, 3, 4)}
    # qkv: 12 x 4 / 4 and 12 / 4; proj: 4 x 4 / 4 and its bias / 2; head / 2; pos_embed: 1 row padded to 2 -> 1 x 12
    assert ideal_bytes(state) == 4 * (12 + 3 + 4 + 2 + 20 + 12)
