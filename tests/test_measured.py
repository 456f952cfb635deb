"""The arithmetic of measured checks (rotated rounds, the self-calibrated pass line, more rounds for close cases) and
the guard that the learner's job idles while the reference runs (with plain processes, no torchrun)."""
import subprocess
import sys
import time

import pytest

from autograder import measured, rounds
from autograder.outcome import RankOutcome, TaskResult


def test_rounds_rotate_so_that_every_side_runs_first_as_often_as_the_others():
    orders = rounds.rotations(6, 3)
    assert orders[:3] == [[0, 1, 2], [2, 0, 1], [1, 2, 0]] and orders[3:] == orders[:3]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert sorted(o[0] for o in orders) == [0, 0, 1, 1, 2, 2]


def _calibrated(reference: float, learner: float) -> dict:
    """Three rounds with a 1-rank baseline of 10 s: the reference's and the learner's speed-ups as given."""
    return rounds.calibrated([10.0] * 3, [10.0 / reference] * 3, [10.0 / learner] * 3, ideal=2.0,
                             floor_efficiency=0.55, reference_share=0.6)


def test_the_line_follows_the_reference_above_the_floor():
    assert _calibrated(reference=2.0, learner=1.3)["threshold"] == 1.2    # 0.6 x 2.0 over the floor 1.1
    assert _calibrated(reference=2.0, learner=1.3)["decision"] == "pass"
    assert _calibrated(reference=2.0, learner=1.15)["decision"] == "fail"
    assert _calibrated(reference=1.5, learner=1.12)["threshold"] == 1.1   # the floor: 0.55 x ideal 2


def test_a_reference_under_the_floor_makes_a_slow_learner_inconclusive_never_failed():
    busy = _calibrated(reference=1.0, learner=0.9)
    assert busy["decision"] == "inconclusive" and busy["reference"] == 1.0
    assert _calibrated(reference=1.0, learner=1.2)["decision"] == "pass"   # fast enough passes anyway


def test_the_median_ignores_one_disturbed_round():
    figure = rounds.calibrated([10.0, 10.0, 30.0], [5.0] * 3, [5.0] * 3, ideal=2.0, floor_efficiency=0.55,
                               reference_share=0.6)
    assert figure["measured"] == 2.0 and figure["ratios"] == [2.0, 2.0, 6.0]


def test_the_student_packs_line_is_the_floor_over_the_learners_own_baseline():
    figure = rounds.self_baseline([10.0] * 3, [10.0] * 3, ideal=2.0, floor_efficiency=0.55)   # 1.0x
    assert figure["threshold"] == 1.1 and figure["decision"] == "fail" and figure["self_baseline"]


def test_a_learner_who_kept_the_references_pace_is_inconclusive_not_failed():
    """Right code is a second sample of the reference's runs: a median under the line is not evidence by itself."""
    # The reference 1.2, 1.3, 1.1x (median 1.2, line 1.12); the learner, the same code, 1.09, 1.13, 1.11x.
    baseline = [12.0, 13.0, 11.0]
    reference, learner = [10.0] * 3, [11.0, 11.5, 9.9]
    kw = dict(ideal=1.6, floor_efficiency=0.7, reference_share=0.85)
    assert rounds.calibrated(baseline, reference, learner, **kw)["decision"] == "fail"   # medians alone
    figure = rounds.calibrated(baseline, reference, learner, pace_share=0.9, **kw)
    assert figure["decision"] == "inconclusive" and figure["why"] == "kept pace" and figure["pace"] >= 0.9
    # Stages that take turns run ~1/1.2 of the reference's pace: still a fail.
    slow = rounds.calibrated(baseline, reference, [b / 1.0 for b in baseline], pace_share=0.9, **kw)
    assert slow["decision"] == "fail" and slow["why"] == "slower" and slow["pace"] < 0.9


def test_close_misses_get_more_rounds_clear_ones_do_not():
    kw = dict(ideal=1.6, floor_efficiency=0.7, reference_share=0.85, pace_share=0.9)
    close = rounds.calibrated([10.0] * 3, [8.0] * 3, [9.5, 8.5, 9.5], **kw)     # 1.05, 1.18, 1.05x: line 1.12
    assert close["decision"] != "pass" and rounds.more_rounds(close, 3, 7)
    assert not rounds.more_rounds(close, 7, 7)                                   # at most max_rounds
    clear = rounds.calibrated([10.0] * 3, [8.0] * 3, [10.0, 9.8, 10.2], **kw)   # every round ~1.0x
    assert clear["decision"] == "fail" and not rounds.more_rounds(clear, 3, 7)
    passed = rounds.calibrated([10.0] * 3, [8.0] * 3, [8.0] * 3, **kw)
    assert passed["decision"] == "pass" and not rounds.more_rounds(passed, 3, 7)
    assert not rounds.more_rounds(None, 0, 7)


def test_timed_rounds_rotate_the_sides_judge_each_round_and_go_on_while_the_case_is_close():
    """The engine every measured check uses: each side first once in three rounds, each round judged after its
    runs, and a close miss measured again (up to max_rounds), a clear one not."""
    thresholds = rounds.SpeedThresholds(floor_efficiency=0.7, reference_share=0.85, pace_share=0.9)

    def measure(learner: list[float]) -> tuple[list, list, dict]:
        ran, judged = [], []
        times = {"baseline": 10.0, "reference": 8.0}

        def run(side: str, i: int) -> float:
            ran.append((i, side))
            return times.get(side) or learner[i]

        seconds, figure = rounds.timed_rounds(
            ["baseline", "reference", "learner"], run, rounds=3, max_rounds=7,
            decide=lambda s: rounds.speed_figure(s, ideal=1.6, thresholds=thresholds),
            after_round=lambda i, f: judged.append((i, len(ran))))
        assert all(len(v) == len(judged) for v in seconds.values())
        return ran, judged, figure

    ran, judged, figure = measure([8.0, 8.0, 8.0])
    assert figure["decision"] == "pass" and [i for i, _ in judged] == [0, 1, 2]
    assert [n for _, n in judged] == [3, 6, 9]                        # each round judged once its three runs are in
    assert {side for i, side in ran if i == 0} == {"baseline", "reference", "learner"}
    assert len({side for i, side in ran[::3]}) == 3                    # each side first once in three rounds
    _, judged, figure = measure([9.5, 8.5, 9.5, 9.5, 9.5, 9.5, 9.5])  # one round reached the line: close
    assert figure["decision"] == "fail" and len(judged) == 7
    _, judged, figure = measure([10.0] * 7)                            # every round ~1.0x: a clear miss
    assert figure["decision"] == "fail" and len(judged) == 3
    no_reference = rounds.speed_figure({"baseline": [10.0] * 3, "learner": [10.0] * 3}, ideal=2.0,
                                       thresholds=thresholds)
    assert no_reference["self_baseline"] and no_reference["threshold"] == 1.4


# ------------------------------------------------------------------ the learner's job must idle while others run

class _FakeJob:
    """A job whose processes are one real process (`code`), and whose task takes `seconds` of wall time."""

    def __init__(self, role: str, code: str = "import time; time.sleep(60)", seconds: float = 1.0):
        self.role, self.seconds = role, seconds
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def run(self, part, inputs, *, group, time_limit, measure_memory):
        time.sleep(self.seconds)
        return TaskResult(part, [RankOutcome(rank=0, ok=True, result={})], started=0.0, seconds=self.seconds)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def _measurement(*jobs) -> measured.Measurement:
    return measured.Measurement(plan=None, call=None, trial=None, jobs=list(jobs))


def test_a_learner_job_that_works_while_the_reference_runs_fails_the_check():
    """A thread that spins while main() is not running slows the reference's timed runs: read from /proc."""
    spinning, reference = _FakeJob("learner", "while True: pass"), _FakeJob("reference", seconds=1.5)
    try:
        time.sleep(0.5)   # the interpreter has started: from here on it only spins
        m = _measurement(spinning, reference)
        m.run(reference, "task", [{}], time_limit=10)
        with pytest.raises(measured.CheckFailed) as failed:
            m.require_idle_learner()
        assert "which had nothing to do" in failed.value.message and "background" in failed.value.hint
    finally:
        spinning.close(), reference.close()


def test_an_idle_learner_job_or_one_busy_with_its_own_task_passes_the_idle_guard():
    sleeping, reference = _FakeJob("learner"), _FakeJob("reference", seconds=1.0)
    spinning = _FakeJob("learner", "while True: pass")
    try:
        time.sleep(0.5)
        m = _measurement(sleeping, reference)
        m.run(reference, "task", [{}], time_limit=10)
        m.require_idle_learner()
        assert m.idle[0] == 1.0 and m.idle[1] < 0.15
        busy = _measurement(spinning, reference)   # the learner runs its own task meanwhile (pipeline's first runs)
        busy.busy.add(id(spinning))
        busy.run(reference, "task", [{}], time_limit=10)
        busy.require_idle_learner()
        assert busy.idle == [0.0, 0.0]
    finally:
        sleeping.close(), reference.close(), spinning.close()
