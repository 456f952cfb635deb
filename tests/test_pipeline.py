"""05_pipeline checks: the reference passes (2 and 3 stages, both frontends); each typical mistake fails with a
hint naming it; the timeline and the bubble arithmetic.

All ranks run on CPUs with gloo (the cpu profile). The reference is tests/controls/pipeline/solution/, which
must equal the source notebook's %%writefile cells (test_notebook_ships_the_reference). Each mistake is the
reference with one textual change, so the change IS the mistake.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import run_check
from autograder.config import course_root
from autograder.timeline import bubble_formula, ideal_speedup, measured_bubble
from conftest import CONTROLS

SOLUTION = CONTROLS / "pipeline" / "solution"
PARTS = ("pipeline.split", "pipeline.schedule", "pipeline.step", "pipeline.checkpoint")
FAST_TRAIN = {"pairs": 1, "steps": 2}   # mistakes in the script show in any run: no need to time three pairs


def _stub(text: str) -> str:
    """What nbgrader's release leaves of a solution: each marked region becomes a raise."""
    return re.sub(r"^(\s*)### BEGIN SOLUTION\n.*?^\s*### END SOLUTION\n",
                  lambda m: f"{m[1]}# YOUR CODE HERE\n{m[1]}raise NotImplementedError()\n",
                  text, flags=re.S | re.M)


def _edit(text: str, edits) -> str:
    for old, new in edits:
        assert old in text, f"the reference no longer contains {old!r}: update this control"
        text = text.replace(old, new)
    return text


def _folder(tmp_path: Path, parts=(), train=(), transform=None) -> Path:
    """pipeline_parts.py and pipeline_train.py: the reference with `parts` / `train` edits applied."""
    for name, edits in (("pipeline_parts.py", parts), ("pipeline_train.py", train)):
        text = _edit((SOLUTION / name).read_text(), edits)
        (tmp_path / name).write_text(transform(text) if transform else text)
    return tmp_path


# ------------------------------------------------------------------ the reference passes

@pytest.mark.slow
@pytest.mark.parametrize("exercise, overrides", [
    ("pipeline.split", {}),
    ("pipeline.split", {"world_size": 3, "blocks": 4, "seed": 3, "microbatches": 3}),
    ("pipeline.schedule", {"world_size": 3, "microbatches": 5, "seed": 2}),
    ("pipeline.step", {}),
    ("pipeline.step", {"world_size": 3, "microbatches": 3, "seed": 4}),
    ("pipeline.checkpoint", {"world_size": 3, "seed": 1}),
])
def test_reference_passes(exercise, overrides):
    v = run_check(exercise, module=SOLUTION / "pipeline_parts.py", **overrides)
    assert v.passed, v.to_text()


MANUAL_ROUTE = (
    """    pipe = pipeline(model, mb_args=(example_microbatch,), split_spec=split_spec)
    return pipe.build_stage(rank, torch.device(device))""",
    """    import copy
    from torch.distributed.pipelining import PipelineStage
    # Manual frontend: a copy of the model without the other stages' blocks (EuroSATNet runs its children).
    starts = [0] + [names.index(n) for n in split_spec] + [len(names)]
    part = copy.deepcopy(model)
    for name in names[:starts[rank]] + names[starts[rank + 1]:]:
        delattr(part, name)
    return PipelineStage(part.to(device), rank, world_size, torch.device(device))""")


@pytest.mark.slow
def test_manual_stage_route_passes_split(tmp_path):
    """The manual frontend (a copy of the model without the other blocks) is as right as the tracer."""
    folder = _folder(tmp_path, parts=[MANUAL_ROUTE])
    v = run_check("pipeline.split", module=folder / "pipeline_parts.py", world_size=3)
    assert v.passed, v.to_text()


# ------------------------------------------------------------------ mistakes

@pytest.mark.parametrize("exercise", PARTS)
def test_blank_stub_is_not_implemented(tmp_path, exercise):
    folder = _folder(tmp_path, transform=_stub)
    v = run_check(exercise, module=folder / "pipeline_parts.py")
    assert v.status == "not-implemented" and "NotImplementedError" in v.message, v.to_text()
    assert "YOUR CODE HERE" in v.hint


@pytest.mark.slow
def test_blank_script_fails_naming_the_stub(tmp_path):
    folder = _folder(tmp_path, transform=_stub)
    v = run_check("pipeline.train", module=folder / "pipeline_train.py", **FAST_TRAIN)
    assert not v.passed and "NotImplementedError" in v.message, v.to_text()


PARTS_MISTAKES = {
    "whole_model_every_rank": ("pipeline.split", [(
        "    pipe = pipeline(model, mb_args=(example_microbatch,), split_spec=split_spec)\n"
        "    return pipe.build_stage(rank, torch.device(device))",
        "    from torch.distributed.pipelining import PipelineStage\n"
        "    return PipelineStage(model, rank, world_size, torch.device(device))")], {}, "whole model"),
    "cut_inside_block": ("pipeline.split", [(
        "split_spec = {units[s * len(units) // world_size]: SplitPoint",
        "split_spec = {units[s * len(units) // world_size] + '.3': SplitPoint")], {}, "Cut only between blocks"),
    "example_with_wrong_shape": ("pipeline.split", [(
        "pipeline(model, mb_args=(example_microbatch,)",
        "pipeline(model, mb_args=(example_microbatch[:, :1],)")], {}, "must have the real shape"),
    "schedule_ignores_microbatch_count": ("pipeline.schedule", [(
        "ScheduleGPipe(stage, n_microbatches=n_microbatches,", "ScheduleGPipe(stage, n_microbatches=4,")],
        {}, "ignores n_microbatches"),
    "schedule_without_loss": ("pipeline.schedule", [(
        "ScheduleGPipe(stage, n_microbatches=n_microbatches, loss_fn=loss_fn)",
        "ScheduleGPipe(stage, n_microbatches=n_microbatches)")], {}, "loss_fn"),
    "no_zero_grad": ("pipeline.step", [(
        "    optimizer.zero_grad(set_to_none=True)", "    pass")], {}, "zero_grad"),
    "optimizer_stepped_once_per_epoch": ("pipeline.step", [(
        "    optimizer.step()                          # once per batch", "    # once per epoch, in the script")],
        {}, "once per batch"),
    "labels_given_to_the_first_rank": ("pipeline.step", [(
        "    if is_last:                               # only the last stage sees the labels and the loss\n"
        "        schedule.step(*args, target=labels, losses=losses)\n"
        "    else:\n"
        "        schedule.step(*args)\n",
        "    if is_first:\n"
        "        schedule.step(*args, target=labels)\n"
        "    else:\n"
        "        schedule.step(losses=losses)\n")], {}, "last stage computes the loss"),
    "loss_summed_over_microbatches": ("pipeline.step", [(
        "torch.stack(losses).mean().item()", "torch.stack(losses).sum().item()")], {}, "sum of the microbatch losses"),
    "only_rank0_saves_its_stage": ("pipeline.checkpoint", [(
        "    dcp.save(stage.submod.state_dict(), checkpoint_id=path)\n",
        "    if dist.get_rank() == 0:\n        dcp.save(stage.submod.state_dict(), checkpoint_id=path)\n")],
        {}, "Every rank must save its own stage"),
    "parameters_without_buffers_saved": ("pipeline.checkpoint", [(
        "dcp.save(stage.submod.state_dict(),", "dcp.save(dict(stage.submod.named_parameters()),")],
        {}, "running statistics"),
    "collective_load_in_one_process": ("pipeline.checkpoint", [(
        "dcp.load(state, checkpoint_id=path, no_dist=True)", "dcp.load(state, checkpoint_id=path)")],
        {}, "no_dist=True"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mistake", sorted(PARTS_MISTAKES))
def test_parts_mistake_is_rejected_with_a_hint_that_names_it(tmp_path, mistake):
    exercise, edits, overrides, words = PARTS_MISTAKES[mistake]
    folder = _folder(tmp_path, parts=edits)
    v = run_check(exercise, module=folder / "pipeline_parts.py", **overrides)
    assert not v.passed and v.status == "fail", v.to_text()
    assert words in v.message + " " + v.hint, v.to_text()


TRAIN_MISTAKES = {
    "optimizer_over_the_whole_model": ([], [(
        "torch.optim.SGD(stage.submod.parameters(),", "torch.optim.SGD(model.parameters(),")],
        "Scope the optimizer to the local stage"),
    "optimizer_stepped_once_per_epoch": (
        [("    optimizer.step()                          # once per batch", "    # the script steps, per epoch")],
        [("        if is_last and losses:\n", "        optimizer.step()                      # once per epoch\n"
                                               "        if is_last and losses:\n")],
        "not once per epoch"),
    "whole_batch_as_example_microbatch": ([], [(
        "build_stage(model, train_x[:microbatch].to(device), device)",
        "build_stage(model, train_x[:args.batch_size].to(device), device)")], "ONE microbatch"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mistake", sorted(TRAIN_MISTAKES))
def test_script_mistake_is_rejected_with_a_hint_that_names_it(tmp_path, mistake):
    parts, train, words = TRAIN_MISTAKES[mistake]
    folder = _folder(tmp_path, parts=parts, train=train)
    v = run_check("pipeline.train", module=folder / "pipeline_train.py", **FAST_TRAIN)
    assert not v.passed and v.status == "fail", v.to_text()
    assert words in v.message + " " + v.hint, v.to_text()


# ------------------------------------------------------------------ speed and timeline

@pytest.mark.timing
def test_reference_script_overlaps_microbatches():
    """The reference's speed-up over one microbatch passes the cpu pass line, with a timeline of both schedules."""
    v = run_check("pipeline.train", module=SOLUTION / "pipeline_train.py")
    assert v.passed, v.to_text()
    speedup, timeline = v.details["speedup"], v.details["timeline"]
    assert speedup["measured"] >= speedup["threshold"] and speedup["ideal"] == pytest.approx(1.6)
    assert set(timeline["schedules"]) == {"GPipe", "1F1B"}
    for name, events in timeline["schedules"].items():
        assert sorted((e[0], e[1], e[2]) for e in events) == sorted(
            (r, k, mb) for r in range(2) for k in "FB" for mb in range(4)), name
        assert 0 < timeline["bubble"][name]["measured"] < 1


@pytest.mark.slow
def test_timeline_script_writes_a_drawable_timeline(tmp_path):
    """`-m autograder.timeline` with the learner's parts: every rank's F and B of every microbatch, drawn."""
    out = tmp_path / "timeline.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "autograder.timeline", "--microbatches", "2", "--batch-size", "4", "--steps", "1",
           "--parts", str(SOLUTION / "pipeline_parts.py"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bubble" in done.stdout
    data = json.loads(out.read_text())
    assert set(data["schedules"]) == {"GPipe", "1F1B"} and data["n_stages"] == 2
    assert data["bubble"]["GPipe"]["formula"] == pytest.approx(1 / 3)
    for events in data["schedules"].values():
        assert sorted((e[0], e[1], e[2]) for e in events) == sorted(
            (r, k, mb) for r in range(2) for k in "FB" for mb in range(2))
        assert all(e[3] <= e[4] for e in events)
    from autograder.figures import render
    from autograder.verdict import Verdict

    fig = render(Verdict(exercise="pipeline.train", passed=True, message="", details={"timeline": data}))
    assert fig is not None and len(fig.axes) == 2


def test_bubble_arithmetic():
    assert bubble_formula(2, 4) == pytest.approx(0.2) and bubble_formula(4, 1) == pytest.approx(0.75)
    assert ideal_speedup(2, 4) == pytest.approx(1.6) and ideal_speedup(2, 1) == pytest.approx(1.0)
    # Two ranks, two microbatches, unit-time F and B, GPipe: each rank busy 4 of 6 time units.
    gpipe = [[0, "F", 0, 0, 1], [0, "F", 1, 1, 2], [1, "F", 0, 1, 2], [1, "F", 1, 2, 3],
             [1, "B", 0, 3, 4], [1, "B", 1, 4, 5], [0, "B", 0, 4, 5], [0, "B", 1, 5, 6]]
    assert measured_bubble(gpipe, 2) == pytest.approx(bubble_formula(2, 2))
    serial = [[0, "F", 0, 0, 1], [1, "F", 0, 1, 2], [1, "B", 0, 2, 3], [0, "B", 0, 3, 4]]
    assert measured_bubble(serial, 2) == pytest.approx(0.5)


# ------------------------------------------------------------------ the notebook ships the reference

def test_notebook_ships_the_reference():
    from autograder.reverify import writefile_cells

    notebook = json.loads((course_root() / "source" / "05_pipeline" / "05_pipeline.ipynb").read_text())
    files = writefile_cells(notebook)
    for name in ("pipeline_parts.py", "pipeline_train.py"):
        shipped = (files.get(name) or "").rstrip("\n")   # %%writefile writes the cell as is, without a last newline
        assert shipped == (SOLUTION / name).read_text().rstrip("\n"), f"{name}: notebook and {SOLUTION} differ"
