"""Launcher and harness behaviour on the cpu profile (gloo, 2 ranks): pass, raise, hang, flood, orphans."""
from __future__ import annotations

import sys
import textwrap

import pytest

from autograder import launch, run_check
from conftest import control

pytestmark = pytest.mark.slow


def _script(tmp_path, body: str):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_run_job_passes_and_leaves_nothing(tmp_path):
    script = _script(tmp_path, """
        import os
        print("hello from rank", os.environ["RANK"], flush=True)
    """)
    result = launch.run_job([launch.torchrun_command(2, [str(script)])], tmp_path / "job", 60, {})
    assert result.returncode == 0 and not result.timed_out
    assert "hello from rank 0" in result.agent_log and "hello from rank 1" in result.agent_log


def test_run_job_time_out_is_a_result(tmp_path):
    script = _script(tmp_path, """
        import time
        time.sleep(600)
    """)
    result = launch.run_job([launch.torchrun_command(2, [str(script)])], tmp_path / "job", 8, {})
    assert result.timed_out and result.returncode is None
    assert result.seconds < 8 + 5


def test_sweep_kills_processes_that_left_the_session(tmp_path):
    script = _script(tmp_path, """
        import subprocess
        subprocess.Popen(["sleep", "600"], start_new_session=True)
    """)
    result = launch.run_job([[sys.executable, str(script)]], tmp_path / "job", 30, {})
    assert result.returncode == 0  # the autouse fixture proves the sleeping child is gone


def test_one_rank_raises_names_the_rank_and_the_error():
    v = run_check("torchrun.env", module=control("harness", "rank1_raises"))
    assert not v.passed and v.status == "fail"
    assert "rank 1 raised RuntimeError" in v.message and "rank 1 fell over" in v.message
    assert "rank1_raises.py" in v.message  # where, in the learner's file


def test_rank_that_dies_without_a_result_is_reported():
    v = run_check("torchrun.env", module=control("harness", "rank1_dies"))
    assert not v.passed and v.status == "error"
    assert v.message.startswith("rank 1 ended without a result (exit code 3)") or v.message.startswith(
        "rank(s) 1 ended without a result")  # torchrun may stop rank 0 before or after it wrote its result


def test_hang_in_collective_is_a_timeout_with_every_stuck_rank_located():
    v = run_check("torchrun.mean", module=control("torchrun", "skips_collective"), time_limit=20)
    assert v.status == "timeout" and not v.passed
    assert v.seconds < 20 + 6
    assert "rank(s) 1 never finished while rank(s) 0 had" in v.message
    assert "skips_collective.py" in v.stacks["rank 1"]          # rank 1 waits in the learner's all_reduce
    assert "all_reduce" in v.stacks["rank 1"]
    assert "same collective calls" in v.hint


def test_flooding_output_is_stopped_and_kept_out_of_the_notebook(capfd):
    v = run_check("torchrun.env", module=control("harness", "floods_stderr"), time_limit=40)
    assert not v.passed and "output limit" in v.message
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert all(len(log) <= 5000 for log in v.logs.values())


def test_children_that_try_to_outlive_the_check_are_killed():
    v = run_check("torchrun.env", module=control("harness", "spawns_orphan"))
    assert v.passed  # the learner's answer is right; the fixture proves `sleep 600` is gone


def test_module_that_never_finishes_importing_times_out():
    v = run_check("torchrun.env", module=control("harness", "loops_at_import"), time_limit=15)
    assert v.status == "timeout"
    assert "loops_at_import.py" in v.stacks["rank 0"]


@pytest.mark.parametrize("name, status, words", [
    ("syntax_error", "fail", "syntax error on line 1"),
    ("missing_function", "fail", "does not define dist_env()"),
])
def test_preflight_reads_the_file_without_running_it(name, status, words):
    v = run_check("torchrun.env", module=control("harness", name))
    assert (v.status, v.passed) == (status, False) and words in v.message
    assert v.seconds == 0  # nothing was launched


def test_missing_file_says_which_cell_to_run(tmp_path):
    v = run_check("torchrun.env", cwd=tmp_path)
    assert v.status == "error" and "torchrun_basics.py does not exist" in v.message
    assert "%%writefile" in v.hint


def test_check_prints_one_line_on_pass_and_nothing_on_stderr(capfd, tmp_path):
    from autograder import check

    check("torchrun.gather", module=control("torchrun", "solution"))
    out, err = capfd.readouterr()
    assert err == ""
    assert out.count("\n") == 1 and out.startswith("PASS torchrun.gather")


def test_unbounded_memory_is_capped_with_a_clear_verdict():
    v = run_check("torchrun.env", module=control("harness", "eats_memory"))
    assert not v.passed and "allocate memory" in v.message  # torch's allocator refuses past the cap
    assert "memory limit" in v.hint
