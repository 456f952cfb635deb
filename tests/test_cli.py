"""`course check` exit codes and output: 0 pass, 1 fail, 2 usage or environment error."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import solution, stub


def course(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "autograder.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_pass_is_exit_0_with_json():
    proc = course("check", "torchrun.env", "--module", str(solution("02_torchrun", "torchrun_basics.py")), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["passed"] and verdict["world_size"] == 2 and verdict["profile"] == "cpu"


def test_fail_is_exit_1_with_hint():
    proc = course("check", "torchrun.env", "--module", str(stub("02_torchrun", "torchrun_basics.py")))
    assert proc.returncode == 1
    assert "torchrun.env" in proc.stdout and "Hint:" in proc.stdout


@pytest.mark.parametrize("args", [["check"], ["check", "torchrun.env", "--profile", "tpu"], ["frobnicate"]])
def test_usage_errors_are_exit_2(args):
    assert course(*args).returncode == 2


def test_unknown_exercise_is_exit_2_without_traceback():
    proc = course("check", "ddp.teleport")
    assert proc.returncode == 2 and "unknown exercise 'ddp.teleport'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_module_is_an_environment_error(tmp_path):
    proc = course("check", "torchrun.env", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stdout


@pytest.mark.slow
def test_a_killed_check_leaves_no_job_folder_behind(tmp_path):
    """`kill` stops `course check` like Ctrl-C: the ranks are stopped and the job's folder is removed."""
    import os
    import re
    import signal
    import time

    from autograder.launch import trees

    (tmp_path / "torchrun_basics.py").write_text("import time\ntime.sleep(600)\n\n\ndef dist_env():\n    return 0, 0, 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "autograder.cli", "check", "torchrun.env", "--module",
                             str(tmp_path / "torchrun_basics.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    folders, deadline = set(), time.monotonic() + 60
    while not folders and time.monotonic() < deadline:   # this check's job folder, named in its processes' commands
        time.sleep(0.2)
        for pid in trees([proc.pid])[proc.pid]:
            try:
                command = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            folders |= set(re.findall(r"/tmp/course-torchrun\.env-[A-Za-z0-9_]+", command))
    assert folders and all(os.path.isdir(f) for f in folders), folders
    time.sleep(2)   # the ranks are up, importing the module
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert not [f for f in folders if os.path.exists(f)], folders
