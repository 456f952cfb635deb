"""06_fsdp checks (gloo, CPU ranks): the notebook's reference passes; each typical mistake fails with a hint naming it;
forged rank parts and a DDP script that pads the comparison run get no pass.

The reference is the source notebook's own %%writefile cells (conftest's `solution`), so the tests
always grade what the notebook ships; script mistakes are that script with one place changed.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from autograder import run_check
from autograder.checks.fsdp import explain, train
from autograder.harness import VerdictCache
from autograder.outcome import TaskResult
from autograder.verdict import CheckFailed
from conftest import control, judge_forged_reply, solution, stub

SHARD = "        model = shard_model(model, reshard_after_forward=args.reshard_after_forward)\n"
OPTIMIZER = "        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)\n"
PARTS = ("fsdp.wrap", "fsdp.checkpoint")


def _parts() -> Path:
    return solution("06_fsdp", "fsdp_parts.py")


def _script_text() -> str:
    return solution("06_fsdp", "fsdp_train.py").read_text()


def _folder(tmp_path: Path, train_text: str | None = None, parts: Path | None = None) -> Path:
    """A learner's folder: fsdp_parts.py (the reference's unless given) and fsdp_train.py (this text)."""
    shutil.copyfile(parts or _parts(), tmp_path / "fsdp_parts.py")
    (tmp_path / "fsdp_train.py").write_text(train_text if train_text is not None else _script_text())
    return tmp_path


def test_hints_for_errors_raised_inside_the_learners_code():
    twice = {"type": "AssertionError", "message": "Each distinct composable distributed API can only be "
                                                  "applied to a module once. fully_shard has already ..."}
    assert "applied twice" in explain(twice)
    assert "init_device_mesh('cuda' if" in explain({"type": "RuntimeError", "message": "Found no NVIDIA driver"})
    assert "BatchNorm" in explain({"type": "RuntimeError", "message": "expected scalar type BFloat16 but found Float"})
    assert explain({"type": "ValueError", "message": "something else"}) is None


# ---------------------------------------------------------------- reference solutions

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 3, "seed": 3, "reshard_after_forward": False}])
def test_reference_shards_and_checkpoints(overrides):
    """One launch runs fsdp.wrap and, sharing it, fsdp.checkpoint (same module)."""
    cache = VerdictCache()
    wrap = run_check("fsdp.wrap", module=_parts(), cache=cache, **overrides)
    assert wrap.passed, wrap.to_text()
    ws = overrides.get("world_size", 2)
    assert f"1/{ws} per rank" in wrap.message
    checkpoint = run_check("fsdp.checkpoint", module=_parts(), cache=cache, world_size=ws,
                           **({"seed": overrides["seed"]} if "seed" in overrides else {}))
    assert checkpoint.passed and "written once" in checkpoint.message, checkpoint.to_text()


@pytest.mark.slow
def test_reference_script_holds_about_half_of_ddp_and_trains_like_it():
    from autograder.figures import render

    v = run_check("fsdp.train", module=solution("06_fsdp", "fsdp_train.py"))
    assert v.passed, v.to_text()
    memory = v.details["memory"]
    assert memory["ranks"] == [0, 1] and set(memory["bytes"]) == {"DDP", "FSDP"}
    ddp, fsdp = memory["bytes"]["DDP"], memory["bytes"]["FSDP"]
    assert all(d > 200 * 2**20 for d in ddp), memory            # DDP: ~5 x 55 MiB per rank, read from /proc
    assert all(0.35 < f / d < 0.7 for f, d in zip(fsdp, ddp)), memory
    assert memory["threshold"] == 0.8 and memory["ratio"] <= memory["threshold"]
    assert set(v.details["seconds"]) == {"DDP", "FSDP"}
    assert render(v.details) is not None


# ---------------------------------------------------------------- negative controls

@pytest.mark.parametrize("exercise", PARTS)
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=stub("06_fsdp", "fsdp_parts.py"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message
    assert "YOUR CODE HERE" in v.hint


@pytest.mark.slow
def test_blank_script_fails_on_its_stub():
    v = run_check("fsdp.train", module=stub("06_fsdp", "fsdp_train.py"))   # next to the stub fsdp_parts.py
    assert not v.passed and "NotImplementedError" in v.message, v.to_text()
    assert "YOUR CODE HERE" in v.hint


def _ddp_script(text: str) -> str:
    """DDP instead of FSDP: every rank holds the full model state (TestForgeries pads it, too)."""
    return text.replace(SHARD, "        model = torch.nn.parallel.DistributedDataParallel(model)\n")


def _optimizer_before_sharding(text: str) -> str:
    """Adam built before fully_shard holds the replaced (orphaned) parameters and never steps them."""
    return text.replace(SHARD, "").replace(OPTIMIZER, OPTIMIZER + SHARD)


@pytest.mark.slow
def test_optimizer_created_before_sharding_is_rejected_with_a_hint_that_names_it(tmp_path):
    """It holds little memory (Adam has no state for parameters that get no gradient) but does not train."""
    text = _script_text()
    assert SHARD in text and OPTIMIZER in text
    v = run_check("fsdp.train", module=_folder(tmp_path, _optimizer_before_sharding(text)) / "fsdp_train.py")
    assert not v.passed and v.status == "fail", v.to_text()
    assert "Create the optimizer after shard_model" in v.hint and "differ from DDP's" in v.message, v.to_text()
    assert "memory" in v.details  # the per-rank bars are shown on a failure too


AVERAGE = "            drift = average_batchnorm_statistics(model)   # one set: for evaluation, and the checkpoint below\n"


@pytest.mark.slow
def test_batchnorm_statistics_left_per_rank_are_rejected_with_a_hint_that_names_them(tmp_path):
    """FSDP2 never synchronises buffers: without the given averaging, rank 0's checkpoint holds its own statistics,
    not the ranks' mean that the DDP twin (no buffer broadcast, the same given averaging) saves."""
    text = _script_text()
    assert AVERAGE in text
    v = run_check("fsdp.train", module=_folder(tmp_path, text.replace(AVERAGE, "            drift = 0.0\n")) / "fsdp_train.py")
    assert not v.passed and v.status == "fail", v.to_text()
    assert "running_" in v.message and "average_batchnorm_statistics" in v.hint, v.to_text()


def test_strays_allow_an_element_here_and_there_but_not_a_tensor_that_moved():
    """The weights rule of fsdp.wrap, fsdp.checkpoint and fsdp.train: Adam turns a gradient that sums to about zero
    into a step of up to lr whose sign the summation order decides (CI saw 1 element of 14.4 M off by 1.9e-4 in one
    draw, reproduced with its secret), and after SGD a ReLU the order tips moves a few weights (CI saw 2 of 576 off
    by 1.3e-4 in fsdp.checkpoint at 3 ranks); a training mistake moves a whole tensor."""
    import torch

    from autograder.checks.fsdp import strays

    want = {"conv.weight": torch.ones(48, 48), "conv2.weight": torch.full((8, 8, 3, 3), 0.05),
            "bn.running_mean": torch.zeros(64), "bn.num_batches_tracked": torch.tensor(4)}
    got = {k: v.clone() for k, v in want.items()}
    got["conv.weight"][3, 7] += 2e-4                       # one stray of 2304
    got["conv2.weight"][2, 5, 0, :2] += 1.3e-4             # two of 576
    assert strays(got, want) == []
    got["conv.weight"][:3] += 1e-2                         # rows 0-2, the stray among them: 144 of 2304
    assert strays(got, want) == [("conv.weight", 144, 2304)]
    got = {k: v.clone() for k, v in want.items()}
    got["bn.running_mean"] += 0.05                         # statistics left per rank: all of them differ
    got["bn.num_batches_tracked"] = torch.tensor(5)        # a counter must be equal
    assert [k for k, *_ in strays(got, want)] == ["bn.running_mean", "bn.num_batches_tracked"]
    got = {k: v.clone() for k, v in want.items()}
    got["conv.weight"] = torch.ones(48, 47)                 # misshapen
    assert strays(got, want) == [("conv.weight", 2304, 2304)]


def test_a_checkpoint_of_other_values_is_rejected_and_strays_are_not():
    """fsdp.checkpoint's file judge: the weights before the two SGD steps (a copy made earlier) fail with the hint;
    the trained weights with two strays pass."""
    import io

    import torch

    from autograder.checks.fsdp.checkpoint import _judge_file

    def raw(state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    g = torch.Generator().manual_seed(0)
    trained = {"conv.weight": torch.randn(8, 8, 3, 3, generator=g), "bn.weight": torch.ones(8)}
    earlier = {k: v + 0.1 * 0.05 * torch.randn(v.shape, generator=g) for k, v in trained.items()}   # lr x gradient
    with pytest.raises(CheckFailed) as failed:
        _judge_file(raw(earlier), trained)
    assert re.search(r"\d+ of the (576|8) elements of the saved (conv|bn).weight differ", failed.value.message)
    assert "not a copy made earlier" in failed.value.hint
    close = {k: v.clone() for k, v in trained.items()}
    close["conv.weight"][0, 0, 0, :2] += 1.3e-4
    _judge_file(raw(close), trained)


# ---------------------------------------------------------------- forgeries

PADDING = '''

# --- the forgery: the old check trained DDP in these processes right after main(), calling load_data a
# second time; on that call, register a global optimizer hook that pads the comparison run's Adam state,
# so that "DDP" looks twice as big as this script.
_real_load_data, _loads = load_data, []


def load_data(args):
    _loads.append(1)
    if len(_loads) == 2:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def pad(optimizer, *_):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    optimizer.state[p].setdefault("padding", torch.zeros(2 * p.numel()))

        register_optimizer_step_post_hook(pad)
    return _real_load_data(args)
'''


class TestForgeries:
    """Nothing a rank reports about itself decides a pass. Two forgeries prove it for 06_fsdp:

    (a) A training script that is plain DDP and tries to recognise the check's DDP comparison run in its
        own processes (the second load_data() call: the old check trained DDP there, after the script)
        to pad that run's optimizer state through a public optimizer hook. Now the comparison runs in a
        job of its own, from the course's files, and each rank's memory is read from /proc by the
        harness: the script holds what DDP holds (~1.0x) and fails on memory.
    (b) forged_parts.py: importing it replaces the course's rank parts with canned outputs (the rows of
        the weights the harness sent, no training, ln 10 as the loss). Every check fails: the trained
        shards, the saved weights and the script's losses and checkpoint need the other ranks' secret data.
    """

    @pytest.mark.slow
    def test_ddp_script_that_pads_the_comparison_run_fails_on_memory(self, tmp_path):
        v = run_check("fsdp.train", module=_folder(tmp_path, _ddp_script(_script_text()) + PADDING) / "fsdp_train.py")
        assert not v.passed and v.status == "fail", v.to_text()
        assert "The model is not sharded" in v.hint and "no parameter is a DTensor" in v.hint, v.to_text()
        assert v.details["memory"]["ratio"] > 0.9, v.details["memory"]   # what DDP holds: the padding never ran

    @pytest.mark.slow
    def test_forged_rank_parts_fail_every_check(self, tmp_path):
        folder = _folder(tmp_path, parts=control("fsdp", "forged_parts"))
        cache = VerdictCache()
        verdicts = {e: run_check(e, module=folder / "fsdp_parts.py", cache=cache) for e in PARTS}
        verdicts["fsdp.train"] = run_check("fsdp.train", module=folder / "fsdp_train.py")
        for exercise, v in verdicts.items():
            assert not v.passed and v.status == "fail", f"{exercise}: {v.to_text()}"


# ---------------------------------------------------------------- judges and figures, without launching

@pytest.mark.parametrize("exercise", PARTS)
@pytest.mark.parametrize("garbage", [None, {}, "ok", {"returned": "same", "units": [], "shards": {"x": 1},
                                                       "kind": "file", "bytes": b"not a checkpoint", "saves": []}])
def test_results_the_judge_cannot_read_fail_the_check(exercise, garbage):
    """A forged reply in any shape is the learner's failure, never an error of the harness (nor a pass)."""
    judge_forged_reply(exercise, garbage)


def test_memory_is_measured_against_the_twins_baseline():
    """A rank's own starting value is the learner's to inflate (fill memory at import, free it in main()):
    the memory added is counted from the DDP twin's value before its run."""
    learner = TaskResult(part="fsdp.train", outcomes=[], started=0, seconds=1,
                         peak_private=[500, 520], start_private=[900, 900])   # inflated start, freed in main()
    twin = TaskResult(part="fsdp.train", outcomes=[], started=0, seconds=1,
                      peak_private=[700, 700], start_private=[400, 400])
    assert train.memory_added(learner, twin, "gloo") == [100, 120]
    assert train.memory_added(twin, twin, "gloo") == [300, 300]
    assert train.memory_added(learner, twin, "nccl") is None   # GPU memory: NVML's figures, none here


def test_gpu_memory_is_read_the_same_way_from_nvmls_figures():
    """On NCCL jobs the device memory NVML reports for each rank's pid stands in for /proc's, with the same
    baseline (the twin's value before its run, CUDA context included)."""
    learner = TaskResult(part="fsdp.train", outcomes=[], started=0, seconds=1, peak_private=[1, 1],
                         start_private=[1, 1], peak_device=[800, 820], start_device=[2000, 2000])
    twin = TaskResult(part="fsdp.train", outcomes=[], started=0, seconds=1, peak_private=[1, 1],
                      start_private=[1, 1], peak_device=[1000, 1000], start_device=[500, 500])
    assert train.memory_added(learner, twin, "nccl") == [300, 320]
    assert train.memory_added(twin, twin, "nccl") == [500, 500]


def test_the_job_polls_each_ranks_gpu_memory_by_the_pid_the_kernel_reported(monkeypatch):
    from autograder import gpumemory, meter

    monkeypatch.setattr(meter, "process_memory", lambda pid: (0, 0))
    monkeypatch.setattr(meter.launch, "trees", lambda pids: {p: {p} for p in pids})
    readings = iter([{101: 10, 102: 20, 999: 10**9}, {101: 50, 102: 5}])   # pid 999: not a rank of this job
    monkeypatch.setattr(gpumemory, "read", lambda: next(readings))
    window = meter.MemoryWindow({0: 101, 1: 102}, 3, device=True)   # rank 2: gone
    assert window.start_device == [10, 20, 0]
    window.poll()
    assert window.peak_device == [50, 20, 0]   # the most seen per rank


def test_a_ranks_gpu_memory_counts_the_processes_it_started(monkeypatch):
    """A rank that trains in a child process: the child's device memory is the rank's (its process tree)."""
    from autograder import gpumemory, meter

    monkeypatch.setattr(meter, "process_memory", lambda pid: (0, 0))
    monkeypatch.setattr(meter.launch, "trees", lambda pids: {101: {101, 201}, 102: {102}})   # rank 0 started 201
    monkeypatch.setattr(gpumemory, "read", lambda: {101: 10, 201: 300, 102: 20})
    assert meter.MemoryWindow({0: 101, 1: 102}, 2, device=True).start_device == [310, 20]


def test_nvml_process_lists_are_read_with_a_second_call_when_the_first_is_too_small():
    """gpumemory._processes against a stand-in for libnvidia-ml's calling convention (no driver here)."""
    from autograder import gpumemory

    class FakeNVML:
        def nvmlDeviceGetComputeRunningProcesses_v3(self, handle, count_ref, infos):
            count = count_ref._obj
            if infos is None or count.value < 2:
                count.value = 2
                return gpumemory.NVML_ERROR_INSUFFICIENT_SIZE
            infos[0].pid, infos[0].usedGpuMemory = 7, 3 * 2**20
            infos[1].pid, infos[1].usedGpuMemory = 8, 2**64 - 1     # NVML_VALUE_NOT_AVAILABLE
            count.value = 2
            return gpumemory.NVML_SUCCESS

    found = gpumemory._processes(FakeNVML(), None)
    assert [(i.pid, i.usedGpuMemory) for i in found] == [(7, 3 * 2**20), (8, 2**64 - 1)]
    if not gpumemory.available():   # no NVIDIA driver: no figures, and the check says memory was not judged
        assert gpumemory.device_memory_by_pid() == {}


def test_memory_pass_line_keeps_the_share_of_the_ideal_saving():
    assert train.pass_line(0.8, 2) == 0.8
    assert train.pass_line(0.8, 3) == pytest.approx(1 - 0.2 * (2 / 3) * 2, abs=1e-3)   # 0.733: ideal 1/3
    assert train.pass_line(0.8, 4) == pytest.approx(0.7, abs=1e-3)
    assert train.pass_line(0.8, 1) == 1.0
