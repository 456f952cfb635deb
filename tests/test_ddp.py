"""04_ddp checks: the notebook's reference passes every variant; each typical mistake fails with a hint naming it;
forged rank parts, a stretched baseline and grading-only forgeries get no pass.

All ranks run on CPUs with gloo (the cpu profile). The reference is the source notebook's own
%%writefile cells (conftest's `solution`), so the tests always grade what the notebook ships.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autograder import rounds, run_check
from autograder.checks.ddp import train
from autograder.harness import VerdictCache
from conftest import control, judge_forged_reply, solution, spinning_while_idle

PARTS = ("ddp.init", "ddp.data", "ddp.wrap", "ddp.metrics", "ddp.checkpoint")


def _parts() -> Path:
    return solution("04_ddp", "ddp_parts.py")


def _script() -> Path:
    return solution("04_ddp", "ddp_train.py")


def _control(name: str) -> Path:
    return control("ddp", name)


def _folder(tmp_path: Path, **files: Path) -> Path:
    """A learner's folder: each keyword's file copied under that name (ddp_parts=..., ddp_train=...)."""
    for name, source in files.items():
        shutil.copyfile(source, tmp_path / f"{name}.py")
    return tmp_path


# ------------------------------------------------------------------ the reference passes

@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"world_size": 3}, {"world_size": 1}],
                         ids=["2 ranks", "3 ranks", "1 rank"])
def test_reference_parts_pass(overrides):
    """All five ddp_parts checks in one launch per world size (the cache runs them as companions)."""
    cache = VerdictCache()
    first = run_check("ddp.init", module=_parts(), cache=cache, **overrides)
    assert first.passed, first.to_text()
    for exercise in PARTS[1:]:
        v = run_check(exercise, module=_parts(), cache=cache, **overrides)
        assert v.passed, v.to_text()


@pytest.mark.slow
@pytest.mark.parametrize("exercise, overrides", [
    ("ddp.data", {"world_size": 2, "nnodes": 2, "size": 31, "batch_size": 5}),   # RANK != LOCAL_RANK
    ("ddp.wrap", {"world_size": 3, "seed": 5}),
])
def test_reference_passes_other_variants(exercise, overrides):
    v = run_check(exercise, module=_parts(), **overrides)
    assert v.passed, v.to_text()


@pytest.mark.slow
def test_reference_script_trains_on_one_rank():
    """One rank: correctness only (the learner's weights against the reference's, metrics, checkpoint)."""
    v = run_check("ddp.train", module=_script(), world_size=1, images=100)
    assert v.passed and "speed-up needs 2 or more ranks" in v.message, v.to_text()


@pytest.mark.timing
def test_reference_script_is_faster_on_two_ranks(graded_assignment):
    """The reference's ddp.train passes its pass line: read from the session's full-marks grade of 04 (the same
    script, measured once; that grade re-runs an undecided measurement, as a student's hint says)."""
    v = graded_assignment("04_ddp").verdict("ddp.train")
    speed = v.details["speedup"]
    print(f"\nspeed-up {speed['measured']:.2f}x (rounds {speed['ratios']}), reference {speed['reference']:.2f}x "
          f"(rounds {speed['reference_ratios']}), pass line {speed['threshold']:.2f}x, check {v.seconds:.0f} s")
    assert v.passed, v.to_text()
    assert speed["measured"] >= speed["threshold"] and speed["ideal"] == 2


# ------------------------------------------------------------------ mistakes are named

@pytest.mark.parametrize("exercise", PARTS)
def test_blank_stub_is_not_implemented(exercise):
    v = run_check(exercise, module=_control("stub"))
    assert v.status == "not-implemented" and "NotImplementedError" in v.message
    assert "YOUR CODE HERE" in v.hint


@pytest.fixture
def whole_dataset_script(tmp_path) -> Path:
    """The reference script with one mistake: a plain shuffling DataLoader, so every rank trains on everything."""
    _folder(tmp_path, ddp_parts=_parts())
    script = _script().read_text()
    mistake = {"train_loader = make_train_loader(train_set, args.batch_size)":
               "train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)",
               "start_epoch(train_loader, epoch)": "pass   # no sampler: nothing to reshuffle"}
    for right, wrong in mistake.items():
        assert script.count(right) == 1
        script = script.replace(right, wrong)
    (tmp_path / "ddp_train.py").write_text(script)
    return tmp_path / "ddp_train.py"


@pytest.mark.timing
def test_script_where_every_rank_trains_on_everything_fails(whole_dataset_script):
    """Named by the images each rank trained on (its weights are not the reference's), with the speed-up shown:
    the check stops after the first round, whose speed-up alone would fail it too."""
    v = run_check("ddp.train", module=whole_dataset_script, world_size=2)
    assert not v.passed and v.status == "fail", v.to_text()
    assert "every rank processed the whole dataset" in v.message and "make_train_loader" in v.hint, v.to_text()
    speed = v.details["speedup"]
    assert speed["measured"] < speed["threshold"], speed
    print(f"\nduplicate-work speed-up {speed['measured']:.2f}x (rounds {speed['ratios']}), "
          f"pass line {speed['threshold']:.2f}x, check {v.seconds:.0f} s")


# ------------------------------------------------------------------ forgeries

class TestForgeries:
    """What the rank side reports is never evidence on its own. Three forgeries prove it:

    (a) forged_parts.py: every function is `pass`, and importing the module swaps the course's rank
        parts for ones that return canned "passing" outputs. Every ddp check fails: each verdict
        rests on values computed from the call's secret inputs (a sum over ranks, weights trained
        on a secret batch, tokens, a checkpoint of secret weights, the reference's training).
    (b) sleeps_on_one_rank.py: a script that is slow on N ranks and sleeps even longer on one rank,
        stretching a baseline it would time itself. The baseline is the reference's: no pass.
    (c) forges_when_grading.py: the notebook's solution, which forges only when the environment
        looks like grading (NBGRADER_EXECUTION, COURSE_* variables). The ranks get the harness's
        environment, not the caller's: the verdicts are the same with those variables as without.
    (d) spins_while_idle_tail.py: the notebook's script plus a thread that burns CPU while main() is not
        running, slowing the reference's timed runs. The job's CPU time, read from /proc while the
        reference runs, names it.
    """

    @pytest.mark.slow
    def test_forged_rank_parts_fail_every_check(self, tmp_path):
        folder = _folder(tmp_path, ddp_parts=_control("forged_parts"), ddp_train=_script())
        cache = VerdictCache()
        verdicts = {e: run_check(e, module=folder / "ddp_parts.py", cache=cache) for e in PARTS}
        # Correctness only (one round of the reference's and the learner's N-rank runs): the speed is not the point.
        verdicts["ddp.train"] = run_check("ddp.train", module=folder / "ddp_train.py", repeats=0)
        for exercise, v in verdicts.items():
            assert not v.passed and v.status == "fail", f"{exercise}: {v.to_text()}"

    @pytest.mark.timing
    def test_script_that_stretches_its_own_baseline_gets_no_pass(self, tmp_path):
        folder = _folder(tmp_path, ddp_parts=_parts(), reference_train=_script(),
                         ddp_train=_control("sleeps_on_one_rank"))
        v = run_check("ddp.train", module=folder / "ddp_train.py", world_size=2)
        speed = v.details["speedup"]
        print(f"\nstretched-baseline script: {speed['measured']:.2f}x (rounds {speed['ratios']}), reference "
              f"{speed['reference']:.2f}x, pass line {speed['threshold']:.2f}x")
        assert not v.passed and v.status in ("fail", "inconclusive"), v.to_text()
        assert speed["measured"] < speed["threshold"] and "reference" in speed
        assert "weights" not in v.message   # it trains correctly: only the speed fails it

    @pytest.mark.slow
    def test_forgery_that_hides_from_tests_gets_the_same_verdict_when_grading(self, tmp_path, monkeypatch):
        folder = _folder(tmp_path, ddp_parts=_control("forges_when_grading"), honest_parts=_parts(),
                         forged_parts=_control("forged_parts"))

        def verdicts() -> dict:
            cache = VerdictCache()
            return {e: run_check(e, module=folder / "ddp_parts.py", cache=cache).status for e in PARTS}

        quiet = verdicts()
        for name, value in {"NBGRADER_EXECUTION": "1", "COURSE_GRADING_TOKEN": "t", "COURSE_NBGRADER_TOKEN": "t",
                            "COURSE_PROFILE": "cpu", "COURSE_GRADING_SHORTCUTS": "on"}.items():
            monkeypatch.setenv(name, value)
        grading = verdicts()
        assert quiet == grading == {e: "pass" for e in PARTS}, (quiet, grading)


    @pytest.mark.slow
    def test_background_work_while_the_reference_runs_fails(self, tmp_path):
        folder = _folder(tmp_path, ddp_parts=_parts())
        spinning_while_idle(_script(), folder / "ddp_train.py")
        v = run_check("ddp.train", module=folder / "ddp_train.py", world_size=2, repeats=1)
        assert not v.passed and v.status == "fail", v.to_text()
        assert "which had nothing to do" in v.message and "background" in v.hint, v.to_text()


# ------------------------------------------------------------------ the speed-up decision, without launching

def _times(baseline: float, reference: float, learner: float, *, rounds: int = 3) -> dict:
    return {"baseline": [baseline] * rounds, "reference": [reference] * rounds, "learner": [learner] * rounds}


def _thresholds():
    from autograder import checks
    from autograder.course import load_course

    return checks.thresholds_for(checks.get("ddp.train"), load_course().exercise("ddp.train"), "cpu")


@pytest.mark.parametrize("baseline, reference, learner, decision", [
    (4.0, 2.1, 2.1, "pass"),            # as fast as the reference: 1.9x
    (4.0, 2.1, 4.0, "fail"),            # duplicate work or serialised ranks: 1.0x, 53% of the reference's pace
    (4.0, 2.1, 3.8, "fail"),            # 1.05x
    (4.0, 3.9, 4.0, "inconclusive"),    # even the reference reached only 1.03x: the machine is busy
    (2.6, 2.0, 2.5, "inconclusive"),    # 1.04x, but 80% of the reference's pace (1.3x) in the same rounds
])
def test_speedup_decision(baseline, reference, learner, decision):
    figure = rounds.speed_figure(_times(baseline, reference, learner), ideal=2.0, thresholds=_thresholds())
    assert figure["decision"] == decision, figure
    assert figure["ideal"] == 2.0 and figure["threshold"] >= 1.1 and "reference" in figure


def test_the_learners_own_one_rank_runs_are_the_baseline_only_without_a_reference():
    learner, reference = object(), object()
    graded = train.sides({"learner": learner, "reference": reference}, 2, speed_wanted=True)
    assert graded == {"baseline": (reference, 1), "reference": (reference, 2), "learner": (learner, 2)}
    assert train.sides({"learner": learner}, 2, speed_wanted=True) == {"baseline": (learner, 1),
                                                                       "learner": (learner, 2)}
    assert train.sides({"learner": learner, "reference": reference}, 2, speed_wanted=False) == {
        "reference": (reference, 2), "learner": (learner, 2)}   # correctness only: no 1-rank run at all
    self_check = rounds.speed_figure({"baseline": [16.0] * 3, "learner": [4.0] * 3}, ideal=2.0,
                                     thresholds=_thresholds())
    assert self_check["measured"] == 4.0 and self_check["self_baseline"]   # the student pack's self-check only


@pytest.mark.parametrize("exercise", PARTS)
@pytest.mark.parametrize("garbage", [None, {}, "ok", {"kind": "pair", "values": None, "sum": "x", "state": []}])
def test_results_the_judge_cannot_read_fail_the_check(exercise, garbage):
    """A forged reply in any shape is the learner's failure, never an error of the harness (nor a pass)."""
    judge_forged_reply(exercise, garbage)
