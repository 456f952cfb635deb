"""Slurm: `course slurm-script` runs a course script on a real (local, one-node) Slurm, and `course grade --slurm`
fails at once where Slurm is missing. Grading a class through Slurm is in test_grading.py (it compares with the
local grade of the same class)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import slurm_cluster
from autograder import grading, slurm
from autograder.course import load_course

WHOAMI = '''"""Each worker reports its place in the job and joins an all_reduce across the nodes."""
import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
ranks_sum = torch.tensor([float(dist.get_rank())])
dist.all_reduce(ranks_sum)
e = os.environ
print(f"node {e['GROUP_RANK']} of {e['GROUP_WORLD_SIZE']}: RANK={e['RANK']} LOCAL_RANK={e['LOCAL_RANK']} "
      f"WORLD_SIZE={e['WORLD_SIZE']}, restarts {e['TORCHELASTIC_RESTART_COUNT']}, sum of all ranks = "
      f"{ranks_sum.item():.0f}", flush=True)
dist.destroy_process_group()
'''


def course(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "autograder.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_grade_with_slurm_but_no_slurm_fails_at_once_with_one_line(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}   # the venv only: no sbatch
    proc = course("grade", str(tmp_path), "--out", str(tmp_path / "out"), "--slurm", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--slurm needs Slurm's commands on PATH (sbatch" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()   # nothing was started or written


def test_speed_measuring_assignments_get_whole_nodes():
    """The rule that decides --exclusive: an assignment with a check that times a speed-up needs a node alone."""
    course_ = load_course()
    by_id = {a.id: a for a in course_.assignments}
    assert grading._measures_speed({"04_ddp"}, by_id) and grading._measures_speed({"02_torchrun", "07_from_scratch"},
                                                                                    by_id)
    assert not grading._measures_speed({"02_torchrun"}, by_id)


def test_sbatch_options_follow_the_node_rule(tmp_path, monkeypatch):
    """What sbatch is asked for: the array, the time limit, whole nodes or cores, and the site's own options."""
    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\necho 42\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    options = slurm.SlurmOptions(partition="gpu", gres="gpu:2", max_parallel=3, extra=("--account=cs101",))
    for exclusive, expected in ((True, "--exclusive"), (False, "--cpus-per-task=2")):
        job = slurm.submit_array(["python", "-m", "x"], 5, name="n", output="o-%a", seconds=2400, options=options,
                                 exclusive=exclusive, env=dict(os.environ))
        args = (tmp_path / "args").read_text().splitlines()
        assert job == "42" and expected in args and "--array=0-4%3" in args and "--time=40:00" in args, args
        assert {"--partition=gpu", "--gres=gpu:2", "--account=cs101", "--no-requeue"} <= set(args), args


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm_cluster.why_not()
    if why:
        pytest.skip(why)
    with slurm_cluster.local_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@pytest.mark.slow
def test_the_generated_sbatch_script_runs_torchrun_through_slurm(cluster, tmp_path):
    (tmp_path / "whoami.py").write_text(WHOAMI)
    made = course("slurm-script", "whoami.py", "--nodes", "1", "--procs-per-node", "2", "--time", "00:05:00",
                  "--out", "whoami.sbatch", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    script = (tmp_path / "whoami.sbatch").read_text()
    assert "scontrol show hostnames" in script and "--rdzv-backend c10d" in script and "--max-restarts 3" in script
    env = {**os.environ, **cluster}
    done = subprocess.run(["sbatch", "--wait", "--parsable", "whoami.sbatch"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.strip().split(";")[0]
    output = (tmp_path / f"whoami-{job}.out").read_text()
    for rank in (0, 1):
        assert f"node 0 of 1: RANK={rank} LOCAL_RANK={rank} WORLD_SIZE=2, restarts 0, sum of all ranks = 1" \
               in output, output


def test_a_node_whose_grader_differs_from_the_install_record_grades_nothing(tmp_path, monkeypatch):
    """The array task checks its node before it grades: a grader that is not as installed (an unshared or stale
    copy of the course on that node) leaves a log that says so, and no result, so the parent makes it a
    manual-grading row."""
    import json

    from autograder import install, slurmtask

    record = tmp_path / "install.json"
    monkeypatch.setenv(install.MANIFEST_ENV, str(record))
    install.record(record)
    digests = json.loads(record.read_text())
    first = sorted(digests)[0]
    digests[first] = "0" * 64   # as if that file had changed on this node
    record.write_text(json.dumps(digests))
    batch, log = tmp_path / "batch", tmp_path / "student--a.log"
    batch.mkdir()
    marker = tmp_path / "graded"
    (batch / "tasks.json").write_text(json.dumps({"tasks": [dict(
        student="student", assignment="a", log=str(log), command=[sys.executable, "-c",
                                                                  f"open({str(marker)!r}, 'w')"])]}))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert slurmtask.main([str(batch)]) == 3
    assert "this node's grader is not as installed" in log.read_text() and first in log.read_text()
    assert not marker.exists() and (batch / "0.done").read_text() == "3"


def test_slurm_script_takes_the_scripts_own_arguments_after_a_double_dash(tmp_path):
    made = course("slurm-script", "train.py", "--nodes", "3", "--gpus-per-node", "4", "--", "--epochs", "3",
                  "--nodes", "9", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "#SBATCH --nodes=3" in made.stdout and "#SBATCH --gpus-per-node=4" in made.stdout
    assert "--nproc-per-node 4" in made.stdout and "train.py --epochs 3 --nodes 9" in made.stdout, made.stdout
    assert course("slurm-script", "--nodes", "2", cwd=tmp_path).returncode == 2   # no script: a usage error
