"""05_pipeline checks: the notebook's solution passes (2 and 3 stages, both frontends, a nested checkpoint); each
typical mistake fails with a hint naming it; a forgery of the rank parts fails every check; the timeline and the
bubble arithmetic.

All ranks run on CPUs with gloo (the cpu profile). The reference is the source notebook's %%writefile cells
(conftest.solution); each mistake is that reference with one textual change, so the change IS the mistake.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import run_check
from autograder.harness import VerdictCache
from autograder.timeline import bubble_formula, ideal_speedup, measured_bubble
from conftest import control, solution, spinning_while_idle, stub

PARTS = ("pipeline.split", "pipeline.schedule", "pipeline.step", "pipeline.checkpoint")
# Mistakes in the script show in any run: one untimed round of the reference and the learner, few steps.
FAST_TRAIN = {"steps": 2, "judge_speed": False}


def _edit(text: str, edits) -> str:
    for old, new in edits:
        assert old in text, f"the reference no longer contains {old!r}: update this control"
        text = text.replace(old, new)
    return text


def _folder(tmp_path: Path, parts=(), train=()) -> Path:
    """pipeline_parts.py and pipeline_train.py: the notebook's solution with `parts` / `train` edits applied."""
    for name, edits in (("pipeline_parts.py", parts), ("pipeline_train.py", train)):
        (tmp_path / name).write_text(_edit(solution("05_pipeline", name).read_text(), edits))
    return tmp_path


# ------------------------------------------------------------------ the reference passes

@pytest.mark.slow
@pytest.mark.parametrize("world_size, overrides", [
    (2, {}),
    (3, {"blocks": 4, "seed": 3, "microbatches": 3}),   # split's variant; the other parts share its launch
])
def test_reference_passes_every_part_in_one_launch(world_size, overrides):
    cache = VerdictCache()
    module = solution("05_pipeline", "pipeline_parts.py")
    first = run_check("pipeline.split", module=module, world_size=world_size, cache=cache, **overrides)
    assert first.passed, first.to_text()
    shared = {k: v for k, v in overrides.items() if k == "seed"}   # companions run with the call's seed
    for exercise in PARTS[1:]:   # cache hits: they ran in the same job, after pipeline.split
        v = run_check(exercise, module=module, world_size=world_size, cache=cache, **shared)
        assert v.passed, v.to_text()


@pytest.mark.slow
@pytest.mark.parametrize("exercise, overrides", [
    ("pipeline.schedule", {"world_size": 3, "microbatches": 5, "seed": 2}),
    ("pipeline.step", {"world_size": 3, "microbatches": 3, "seed": 4}),
])
def test_reference_passes_variants(exercise, overrides):
    v = run_check(exercise, module=solution("05_pipeline", "pipeline_parts.py"), **overrides)
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


NESTED_CHECKPOINT = [
    ("dcp.save(stage.submod.state_dict(), checkpoint_id=path)",
     "dcp.save({\"model\": stage.submod.state_dict()}, checkpoint_id=path)"),
    ("    state = model.state_dict()                # the keys and shapes to fill\n",
     "    state = {\"model\": model.state_dict()}     # nested under a key, as DCP's own recipes do\n"),
    ("    model.load_state_dict(state)              # strict",
     "    model.load_state_dict(state[\"model\"])     # strict"),
]


@pytest.mark.slow
def test_checkpoint_nested_under_a_key_passes(tmp_path):
    """A checkpoint is judged by its round trip: a layout that save_stage writes and load_full_model reads passes."""
    folder = _folder(tmp_path, parts=NESTED_CHECKPOINT)
    v = run_check("pipeline.checkpoint", module=folder / "pipeline_parts.py", world_size=3)
    assert v.passed, v.to_text()


# ------------------------------------------------------------------ mistakes

@pytest.mark.parametrize("exercise", PARTS)
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=stub("05_pipeline", "pipeline_parts.py"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message, v.to_text()
    assert "YOUR CODE HERE" in v.hint


@pytest.mark.slow
def test_blank_script_fails_naming_the_stub(tmp_path):
    for name in ("pipeline_parts.py", "pipeline_train.py"):
        shutil.copy(stub("05_pipeline", name), tmp_path / name)
    v = run_check("pipeline.train", module=tmp_path / "pipeline_train.py", **FAST_TRAIN)
    assert not v.passed and "NotImplementedError" in v.message, v.to_text()


# ------------------------------------------------------------------ forgery

@pytest.mark.slow
def test_forged_rank_parts_fail_every_parts_check(tmp_path):
    """pipeline_parts.py replaces the course's rank parts on import with canned answers: every check fails."""
    shutil.copy(control("pipeline", "forged_parts"), tmp_path / "pipeline_parts.py")
    cache = VerdictCache()
    for exercise in PARTS:   # one launch: the other parts run in pipeline.split's job
        v = run_check(exercise, module=tmp_path / "pipeline_parts.py", cache=cache)
        assert not v.passed and v.status == "fail", v.to_text()


@pytest.mark.slow
def test_forged_rank_parts_fail_the_script_check(tmp_path):
    """The forged parts answer the script's runs at once with canned weights: the speed is never even judged."""
    shutil.copy(control("pipeline", "forged_parts"), tmp_path / "pipeline_parts.py")
    shutil.copy(solution("05_pipeline", "pipeline_train.py"), tmp_path / "pipeline_train.py")
    v = run_check("pipeline.train", module=tmp_path / "pipeline_train.py", steps=2, rounds=1)
    assert not v.passed and v.status == "fail", v.to_text()
    assert "reference script's on the same secret data" in v.message, v.to_text()


@pytest.mark.slow
def test_background_work_while_the_reference_runs_fails(tmp_path):
    """A script that slows the reference's 1-microbatch baseline (and so flatters its own speed-up) by spinning while
    it has nothing to do: its job's CPU time, read from /proc while the reference runs, names it."""
    folder = _folder(tmp_path)
    spinning_while_idle(folder / "pipeline_train.py", folder / "pipeline_train.py")
    v = run_check("pipeline.train", module=folder / "pipeline_train.py", steps=2, rounds=1, max_rounds=1)
    assert not v.passed and v.status == "fail", v.to_text()
    assert "which had nothing to do" in v.message and "background" in v.hint, v.to_text()


# ------------------------------------------------------------------ speed and timeline

@pytest.mark.timing
def test_reference_script_overlaps_microbatches(graded_assignment):
    """The reference's speed-up over one microbatch passes the calibrated line, with a timeline of both schedules:
    read from the session's full-marks grade of 05 (the same script, measured once; that grade re-runs an undecided
    measurement, as the hint tells a student)."""
    v = graded_assignment("05_pipeline").verdict("pipeline.train")
    print(f"\n{v.to_text()}")
    assert v.passed, v.to_text()
    speedup, timeline = v.details["speedup"], v.details["timeline"]
    assert speedup["measured"] >= speedup["threshold"] and speedup["ideal"] == pytest.approx(1.6)
    assert 3 <= len(speedup["ratios"]) == len(speedup["reference_ratios"]) <= 7
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
           "--parts", str(solution("05_pipeline", "pipeline_parts.py")), "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
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

    fig = render({"timeline": data})
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
