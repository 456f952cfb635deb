"""06_fsdp checks (gloo, CPU ranks): the reference passes; each typical mistake fails with a hint naming it."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from autograder import run_check
from autograder.harness import VerdictCache
from conftest import CONTROLS, control

NOTEBOOK = Path(__file__).resolve().parents[1] / "source" / "06_fsdp" / "06_fsdp.ipynb"
SHARD = "        model = shard_model(model, reshard_after_forward=args.reshard_after_forward)\n"
OPTIMIZER = "        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)\n"


def _writefile_cells() -> dict[str, str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    found = {}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("%%writefile "):
            first, _, body = source.partition("\n")
            found[first.split()[1]] = body
    return found


def _script(tmp_path: Path, name: str, text: str) -> Path:
    """A variant of fsdp_train.py in its own folder, next to the reference fsdp_parts.py it imports."""
    shutil.copy(control("fsdp", "fsdp_parts"), tmp_path / "fsdp_parts.py")
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def _stubbed(text: str) -> str:
    """What nbgrader gives the learner: every solution region replaced by a NotImplementedError stub."""
    return re.sub(r"( *)### BEGIN SOLUTION\n.*?### END SOLUTION\n",
                  lambda m: f"{m[1]}# YOUR CODE HERE\n{m[1]}raise NotImplementedError()\n", text, flags=re.S)


def test_notebook_exercise_cells_are_the_tested_reference():
    cells = _writefile_cells()
    for name in ("fsdp_parts.py", "fsdp_train.py"):
        assert cells[name].rstrip() == (CONTROLS / "fsdp" / name).read_text().rstrip(), name


def test_hints_for_errors_raised_inside_the_learners_code():
    from autograder.checks.fsdp import _explain

    twice = {"type": "AssertionError", "message": "Each distinct composable distributed API can only be "
                                                  "applied to a module once. fully_shard has already ..."}
    assert "applied twice" in _explain(twice)
    assert "init_device_mesh('cuda' if" in _explain({"type": "RuntimeError", "message": "Found no NVIDIA driver"})
    assert "BatchNorm" in _explain({"type": "RuntimeError", "message": "expected scalar type BFloat16 but found Float"})
    assert _explain({"type": "ValueError", "message": "something else"}) is None


# ---------------------------------------------------------------- reference solutions

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 3, "seed": 3, "reshard_after_forward": False}])
def test_reference_shards_and_checkpoints(overrides):
    """One launch runs fsdp.wrap and, sharing it, fsdp.checkpoint (same module)."""
    cache = VerdictCache()
    wrap = run_check("fsdp.wrap", module=control("fsdp", "fsdp_parts"), cache=cache, **overrides)
    assert wrap.passed, wrap.to_text()
    ws = overrides.get("world_size", 2)
    assert f"1/{ws} per rank" in wrap.message
    checkpoint = run_check("fsdp.checkpoint", module=control("fsdp", "fsdp_parts"), cache=cache,
                           world_size=ws)
    assert checkpoint.passed and "written once" in checkpoint.message, checkpoint.to_text()


@pytest.mark.slow
def test_reference_script_holds_half_of_ddp_and_trains_like_it():
    from autograder.figures import render

    v = run_check("fsdp.train", module=control("fsdp", "fsdp_train"))
    assert v.passed, v.to_text()
    memory = v.details["memory"]
    assert memory["ranks"] == [0, 1] and set(memory["bytes"]) == {"DDP", "FSDP"}
    ddp, fsdp = memory["bytes"]["DDP"], memory["bytes"]["FSDP"]
    assert ddp[0] == ddp[1] and all(0.45 < f / d < 0.55 for f, d in zip(fsdp, ddp)), memory
    assert set(v.details["step_seconds"]) == {"DDP", "FSDP"}
    assert render(v) is not None


# ---------------------------------------------------------------- negative controls

@pytest.mark.parametrize("exercise", ["fsdp.wrap", "fsdp.checkpoint"])
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=control("fsdp", "stub"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message
    assert "YOUR CODE HERE" in v.hint


@pytest.mark.slow
def test_blank_script_fails_on_its_stub(tmp_path):
    path = _script(tmp_path, "fsdp_train", _stubbed(control("fsdp", "fsdp_train").read_text()))
    v = run_check("fsdp.train", module=path)
    assert not v.passed and "NotImplementedError" in v.message, v.to_text()
    assert "YOUR CODE HERE" in v.hint


@pytest.mark.slow
@pytest.mark.parametrize("exercise, mistake, overrides, words", [
    ("fsdp.wrap", "only_root", {}, "only the root is an FSDP unit"),
    ("fsdp.wrap", "blocks_not_root", {}, "the root (the model itself) is not"),
    ("fsdp.wrap", "ddp_instead", {}, "DistributedDataParallel"),
    ("fsdp.wrap", "applied_twice", {}, "applied fully_shard twice to model.head"),
    ("fsdp.wrap", "kwargs_root_only", {"reshard_after_forward": False}, "Pass **fsdp_kwargs on to every"),
    ("fsdp.checkpoint", "sharded_checkpoint", {}, "sharded-only checkpoint"),
    ("fsdp.checkpoint", "every_rank_writes", {}, "every rank writes"),
])
def test_mistake_is_rejected_with_a_hint_that_names_it(exercise, mistake, overrides, words):
    v = run_check(exercise, module=control("fsdp", mistake), **overrides)
    assert not v.passed and v.status == "fail", v.to_text()
    assert words in v.message + " " + v.hint, v.to_text()


def _ddp_script(text: str) -> str:
    """DDP instead of FSDP: every rank holds the full model state."""
    return text.replace(SHARD, "        model = torch.nn.parallel.DistributedDataParallel(model)\n")


def _optimizer_before_sharding(text: str) -> str:
    """Adam built before fully_shard holds the replaced (orphaned) parameters and never steps them."""
    return text.replace(SHARD, "").replace(OPTIMIZER, OPTIMIZER + SHARD)


@pytest.mark.slow
@pytest.mark.parametrize("mistake, words", [
    (_ddp_script, "The model is not sharded"),
    (_optimizer_before_sharding, "Create the optimizer after shard_model"),
])
def test_script_mistake_is_rejected_with_a_hint_that_names_it(tmp_path, mistake, words):
    text = control("fsdp", "fsdp_train").read_text()
    assert SHARD in text and OPTIMIZER in text
    v = run_check("fsdp.train", module=_script(tmp_path, "fsdp_train", mistake(text)))
    assert not v.passed and v.status == "fail", v.to_text()
    assert words in v.message + " " + v.hint, v.to_text()
    assert "memory" in v.details  # the per-rank bars are shown on a failure too
