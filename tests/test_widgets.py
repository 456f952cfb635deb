"""Self-check widget: one button per exercise, shows progress then the verdict; silent under nbgrader."""
from __future__ import annotations

from autograder.verdict import Verdict
from autograder.widgets import check_buttons, self_check


def _buttons(box):
    return [row.children[0] for row in box.children], [row.children[1] for row in box.children]


def test_one_button_per_exercise_and_click_shows_verdict_with_hint_and_logs():
    seen = []

    def runner(exercise_id):
        seen.append(exercise_id)
        return Verdict(exercise=exercise_id, passed=False, message="got the sum", hint="divide by the world size",
                       world_size=2, profile="cpu", logs={"rank 1": "Traceback: boom"})

    box = check_buttons("02_torchrun", runner)
    buttons, outputs = _buttons(box)
    assert [b.description for b in buttons] == ["Check torchrun.env", "Check torchrun.mean", "Check torchrun.gather"]
    buttons[1].click()
    assert seen == ["torchrun.mean"]
    html = outputs[1].value
    assert "FAIL torchrun.mean" in html and "divide by the world size" in html
    assert "<details><summary>Output of rank 1</summary>" in html and "boom" in html
    assert not buttons[1].disabled  # ready for the next try


def test_speedup_verdict_carries_a_picture():
    verdict = Verdict(exercise="torchrun.env", passed=True, message="1.9x", world_size=2, profile="cpu",
                      details={"speedup": {"measured": 1.9, "ideal": 2.0, "threshold": 1.4, "label": "2 ranks vs 1"}})
    box = check_buttons("02_torchrun", lambda _id: verdict)
    buttons, outputs = _buttons(box)
    buttons[0].click()
    assert '<img alt="torchrun.env figure" src="data:image/png;base64,' in outputs[0].value


def test_a_verdicts_picture_leaves_the_notebooks_own_plots_alone():
    """The widget draws outside pyplot: after a self-check, the kernel's backend (inline in Jupyter) and its open
    figures are what they were, so the notebook's next plt.show() still shows its plot."""
    import matplotlib
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.switch_backend("module://matplotlib_inline.backend_inline")   # what a Jupyter kernel uses
    before = matplotlib.get_backend()
    verdict = Verdict(exercise="ddp.train", passed=True, message="1.9x", world_size=2, profile="cpu",
                      details={"memory": {"ranks": [0, 1], "bytes": {"DDP": [300, 300], "FSDP": [170, 180]}}})
    buttons, outputs = _buttons(check_buttons("04_ddp", lambda _id: verdict))
    buttons[0].click()
    assert "data:image/png;base64," in outputs[0].value
    try:
        assert matplotlib.get_backend() == before and plt.get_fignums() == []
    finally:
        plt.switch_backend(previous)


def test_a_crashing_runner_shows_in_the_widget():

    def runner(_id):
        raise OSError("disk full")

    box = check_buttons("02_torchrun", runner)
    buttons, outputs = _buttons(box)
    buttons[2].click()
    assert "could not run the check" in outputs[2].value and "disk full" in outputs[2].value


def test_silent_under_nbgrader(monkeypatch, capfd):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    self_check("02_torchrun")  # would display the buttons (text repr) outside nbgrader
    assert capfd.readouterr() == ("", "")
