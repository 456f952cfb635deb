"""The notebooks' helpers: in the setup cell, torchrun demo lines are not run while nbgrader grades, and only then;
the report of a "predict, then measure" cell (03_concepts) with and without a prediction."""
from __future__ import annotations

import sys

import pytest

from autograder.notebook import (AS_SCRIPT, fork_launches, prediction_report, shorten_launches,
                                 skip_launches_while_grading)


@pytest.mark.parametrize("line", [
    "!torchrun --standalone --nproc-per-node {NPROC} hello.py\n",
    "    !torchrun --nproc-per-node 2 train.py --epochs 3\n",
    "!TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --max-restarts 1 train_ft.py\n",
    "!{sys.executable} -m torch.distributed.run --nproc-per-node 2 x.py\n",
])
def test_launch_lines_become_a_printed_note(line):
    [out] = skip_launches_while_grading([line])
    assert "[not run while grading]" in out and ("torchrun" in out or "torch.distributed.run" in out)
    assert out.strip().startswith("print(") and out.startswith(line[: len(line) - len(line.lstrip())])
    compile(out.strip(), "<cell>", "exec")  # still valid Python


@pytest.mark.parametrize("line", [
    "!ls -la\n", "x = 'torchrun'\n", "# !torchrun in a comment\n", "subprocess.run(['torchrun', 'a.py'])\n",
])
def test_other_lines_are_left_alone(line):
    assert skip_launches_while_grading([line]) == [line]


def test_prediction_report_without_a_prediction_still_shows_the_value_and_how():
    """The cells run unattended with my_prediction = None: they show the value and say no guess was typed."""
    report = prediction_report(None, 1 / 3, "6 idle slots / 18 slots of the step", what="counted")
    assert report.splitlines()[0].split() == ["counted:", "0.3333", "=", "6", "idle", "slots", "/", "18", "slots",
                                              "of", "the", "step"]
    assert "none typed" in report.splitlines()[1]


@pytest.mark.parametrize("guess, verdict", [
    (0.33, "right"),                      # rounding is not a miss
    (1 / 3, "right"),
    (0.4, "off by +0.0667 (+20%)"),
    (0.25, "off by -0.0833 (-25%)"),
])
def test_prediction_report_says_how_far_off_a_guess_is(guess, verdict):
    assert prediction_report(guess, 1 / 3, "x").splitlines()[1].endswith(verdict)


def test_prediction_report_with_units_and_a_guess_that_is_not_a_number():
    assert prediction_report(24, 36, "18 + 18", unit=" elements").splitlines() == [
        "measured:   36 elements   = 18 + 18", "prediction: 24 elements   off by -12 elements (-33%)"]
    assert "not a number" in prediction_report("1/3", 1 / 3, "x")


def test_the_smoke_configuration_shortens_training_launches_and_nothing_else():
    lines = ["!torchrun --standalone --nproc-per-node {NPROC} ddp_train.py --limit 1000 --epochs 4 --batch-size 32\n",
             "    !torchrun --nproc-per-node 2 fsdp_train.py --limit=100 --epochs=2\n",
             "DATA = '--limit 1000 --epochs 4'\n", "!python train.py --epochs 9\n"]
    assert shorten_launches(lines) == [
        "!torchrun --standalone --nproc-per-node {NPROC} ddp_train.py --limit 256 --epochs 1 --batch-size 32\n",
        "    !torchrun --nproc-per-node 2 fsdp_train.py --limit=100 --epochs=1\n", lines[2], lines[3]]


def test_the_smoke_configuration_forks_a_scripts_ranks_from_torchrun_and_leaves_other_launches(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    lines = ["!torchrun --standalone --nproc-per-node {NPROC} ddp_train.py {DATA} --metrics m.json\n",
             "    !OMP_NUM_THREADS={CORES} torchrun --nproc-per-node 1 resume_demo.py --save c 2>&1 | head -5\n",
             "!torchrun --standalone --nproc-per-node {NPROC} -m autograder.timeline --parts pipeline_parts.py\n",
             "!torchrun --standalone --nproc-per-node {NPROC} --no-python ./hello.sh --some-flag\n",
             "!python -m torch.distributed.run --nproc-per-node 2 a.py\n", "print('ddp_train.py')\n"]
    assert fork_launches(lines) == [
        f"!torchrun --run-path --start-method=fork --standalone --nproc-per-node {{NPROC}} {AS_SCRIPT} ddp_train.py "
        "{DATA} --metrics m.json\n",
        f"    !OMP_NUM_THREADS={{CORES}} torchrun --run-path --start-method=fork --nproc-per-node 1 {AS_SCRIPT} "
        "resume_demo.py --save c 2>&1 | head -5\n", *lines[2:]]
    monkeypatch.setattr(sys, "platform", "darwin")   # launch.forks_ranks: a fresh interpreter per rank there
    assert fork_launches(lines) == lines


def test_a_script_forked_from_torchrun_runs_as_python_would_run_it(tmp_path):
    """rank/as_script.py: the script's folder first on sys.path, its own argv, __name__ == "__main__"."""
    import subprocess

    (tmp_path / "sibling.py").write_text("VALUE = 42\n")
    (tmp_path / "script.py").write_text("import sys, sibling\nif __name__ == '__main__':\n"
                                        "    print(sibling.VALUE, sys.argv)\n")
    out = subprocess.run([sys.executable, "-I", "-c", "import runpy, sys; sys.argv = sys.argv[1:]; "
                          "runpy.run_path(sys.argv[0], run_name='__main__')", str(AS_SCRIPT),
                          str(tmp_path / "script.py"), "--flag"], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == f"42 ['{tmp_path / 'script.py'}', '--flag']", out


def test_a_check_that_times_a_speed_up_says_how_to_run_untimed():
    from autograder import checks
    from autograder.checks import Check
    from autograder.course import load_course

    timed = [checks.get(e.id) for a in load_course().assignments for e in a.exercises
             if checks.get(e.id).measures_speed]
    assert timed and all(c.unmeasured for c in timed)
    with pytest.raises(ValueError, match="untimed"):
        Check(id="x.y", functions=("f",), measure=lambda m: None, measures_speed=True)
