"""09_efficiency: efficiency.accumulate, efficiency.autocast and efficiency.fsdp_mixed (gloo, CPU ranks), and the
bytes every task's result carries (TaskResult.sent_bytes, read by the harness on the job's own loopback).

The reference is the source notebook's efficiency_parts.py; each control is that function with one mistake, and
must fail with a hint naming it."""
from __future__ import annotations

import pytest

from autograder import run_check
from conftest import require_sandbox, solution, stub


def _parts():
    return solution("09_efficiency", "efficiency_parts.py")


def _graded(graded_assignment, exercise: str, **overrides):
    """The verdict of the source notebook's call check(exercise, **overrides), graded once per test session (conftest:
    the same calls the notebook's visible and hidden tests make; launching them again here would double their cost)."""
    return graded_assignment("09_efficiency").verdict(exercise, **overrides)


# ---------------------------------------------------------------- accumulate

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 3, "k": 4}, {"world_size": 1, "k": 2}])
def test_reference_accumulates_with_one_all_reduce(graded_assignment, overrides):
    v = _graded(graded_assignment, "efficiency.accumulate", **overrides)
    assert v.passed, v.to_text()
    if overrides.get("world_size") == 1:
        assert "bytes not measured: one rank" in v.message
    else:
        sent, one = v.details["bytes"]["sent"], v.details["bytes"]["one_allreduce"]
        assert 1.0 <= sent / one < 1.1, v.details   # measured 1.03 (2 ranks), 1.04 (3): headers, gloo's messages


# ---------------------------------------------------------------- autocast

@pytest.mark.slow
def test_autocast_reference_passes():
    v = run_check("efficiency.autocast", module=_parts(), world_size=3)   # a local check: world_size is ignored
    assert v.passed, v.to_text()
    assert all(w in v.message for w in ["fp16 overflow skipped, scale halved", "bf16 without a scaler",
                                        "parameters stay fp32"]), v.to_text()


# ---------------------------------------------------------------- fsdp_mixed

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 3, "seed": 1}, {"world_size": 1}])
def test_reference_shards_with_bf16_compute_and_fp32_reduction(graded_assignment, overrides):
    v = _graded(graded_assignment, "efficiency.fsdp_mixed", **overrides)
    assert v.passed, v.to_text()
    if overrides.get("world_size") != 1:
        sent = v.details["bytes"]
        assert 0.95 <= sent["yours"] / sent["reference"] <= 1.05, sent   # the same sharding: the same messages
        assert sent["yours"] / sent["fp32"] < 0.85, sent   # measured 0.77: all-gathers in bf16, reductions in fp32


# ---------------------------------------------------------------- the blank stub, the bytes measurement

@pytest.mark.slow
@pytest.mark.parametrize("exercise", ["efficiency.accumulate", "efficiency.autocast", "efficiency.fsdp_mixed"])
def test_blank_stub_fails(exercise):
    module = stub("09_efficiency", "efficiency_parts.py")
    v = run_check(exercise, module=module)
    assert not v.passed and "NotImplementedError" in v.message + v.hint, v.to_text()


@pytest.mark.slow
def test_sent_bytes_of_a_task_are_one_all_reduce_sandboxed_and_none_without_the_sandbox(tmp_path):
    """torchrun.mean's part with the course's global_mean: one all_reduce of a 1 MiB float32 tensor on 2 ranks.
    A ring all-reduce sends 2 (N - 1) / N of the buffer from each rank: 2 MiB in all. The counter also sees
    TCP/IP headers (the loopback's 64 KiB MTU: under 0.2%) and gloo's few small messages: within 5% above."""
    import torch

    from autograder import config, policy
    from autograder.session import Job

    require_sandbox()
    (tmp_path / "torchrun_basics.py").write_text(solution("02_torchrun", "torchrun_basics.py").read_text())
    profile = policy.choose_profile(config.load(), "cpu")
    numel = 256 * 1024
    for sandboxed in (True, False):
        with Job(world_size=2, profile=profile, module="torchrun_basics.py", sources=tmp_path, label="bytes",
                 sandboxed=sandboxed) as job:
            assert job.ready(120) is None
            result = job.run("torchrun.mean", [{"tensor": torch.ones(numel)}] * 2, time_limit=60)
            assert result.complete, result
            if sandboxed:
                expected = 2 * (2 - 1) * 4 * numel
                assert 1.0 <= result.sent_bytes / expected < 1.05, (result.sent_bytes, expected)
            else:
                assert result.sent_bytes is None
