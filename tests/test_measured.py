"""The arithmetic of measured checks: rotated rounds and the self-calibrated pass line (no process started)."""
from autograder import measured


def test_rounds_rotate_so_that_every_side_runs_first_as_often_as_the_others():
    orders = measured.rotations(6, 3)
    assert orders[:3] == [[0, 1, 2], [2, 0, 1], [1, 2, 0]] and orders[3:] == orders[:3]
    assert all(sorted(o) == [0, 1, 2] for o in orders)
    assert sorted(o[0] for o in orders) == [0, 0, 1, 1, 2, 2]


def _calibrated(reference: float, learner: float) -> dict:
    """Three rounds with a 1-rank baseline of 10 s: the reference's and the learner's speed-ups as given."""
    return measured.calibrated([10.0] * 3, [10.0 / reference] * 3, [10.0 / learner] * 3, ideal=2.0,
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
    figure = measured.calibrated([10.0, 10.0, 30.0], [5.0] * 3, [5.0] * 3, ideal=2.0, floor_efficiency=0.55,
                                 reference_share=0.6)
    assert figure["measured"] == 2.0 and figure["ratios"] == [2.0, 2.0, 6.0]


def test_the_student_packs_line_is_the_floor_over_the_learners_own_baseline():
    figure = measured.self_baseline([10.0] * 3, [10.0] * 3, ideal=2.0, floor_efficiency=0.55)   # 1.0x
    assert figure["threshold"] == 1.1 and figure["decision"] == "fail" and figure["self_baseline"]
