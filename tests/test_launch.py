"""Jobs and the harness on the cpu profile (gloo, 2 ranks): pass, raise, die, hang, flood, orphans, memory."""
from __future__ import annotations

import time

import pytest

from autograder import run_check
from conftest import control, solution

pytestmark = pytest.mark.slow


def _profile():
    from autograder import config, policy

    return policy.choose_profile(config.load(), "cpu")


def test_job_runs_a_part_on_every_rank_and_leaves_nothing(tmp_path):
    """Each rank gets its own inputs and replies; the harness times the task from outside."""
    import torch

    from autograder.session import Job

    (tmp_path / "torchrun_basics.py").write_text(solution("02_torchrun", "torchrun_basics.py").read_text())
    with Job(world_size=2, profile=_profile(), module="torchrun_basics.py", sources=tmp_path, label="t") as job:
        assert job.ready(60) is None
        inputs = [{"tensor": torch.full((2,), float(r))} for r in range(2)]
        result = job.run("torchrun.mean", inputs, time_limit=60)
        assert result.complete and 0 < result.seconds < 60
        assert [o.result["result"].tolist() for o in result.outcomes] == [[0.5, 0.5], [0.5, 0.5]]
        assert all(o.calls.get("all_reduce") for o in result.outcomes)


def test_job_time_out_is_a_result(tmp_path):
    from autograder.session import Job

    (tmp_path / "slow.py").write_text("import time\ntime.sleep(600)\n")
    with Job(world_size=2, profile=_profile(), module="slow.py", sources=tmp_path, label="t") as job:
        result = job.ready(15)   # time for the ranks to import torch even on a busy machine, then reach the sleep
        assert result is not None and result.timed_out and 15 <= result.seconds < 15 + 5
        assert "slow.py" in job.stacks()[0]


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


def test_module_that_never_finishes_importing_times_out_once_for_all_its_exercises():
    """The module's other exercises would have shared the launch: they get the same time-out without a launch of
    their own (a class's import loops used to cost one time-out per exercise)."""
    from autograder.planning import VerdictCache

    cache, started = VerdictCache(), time.monotonic()
    for exercise in ("torchrun.env", "torchrun.mean", "torchrun.gather"):
        v = run_check(exercise, module=control("harness", "loops_at_import"), time_limit=15, cache=cache)
        assert v.status == "timeout", (exercise, v.to_text())
        assert "loops_at_import.py" in v.stacks["rank 0"]
    assert time.monotonic() - started < 15 + 10, "a second launch for the same import"


@pytest.mark.parametrize("name, status, words", [
    ("syntax_error", "fail", "syntax error on line 1"),
    ("missing_function", "fail", "does not define dist_env"),
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

    check("torchrun.gather", module=solution("02_torchrun", "torchrun_basics.py"))
    out, err = capfd.readouterr()
    assert err == ""
    assert out.count("\n") == 1 and out.startswith("PASS torchrun.gather")


def test_unbounded_memory_is_capped_with_a_clear_verdict():
    v = run_check("torchrun.env", module=control("harness", "eats_memory"))
    assert not v.passed and "allocate memory" in v.message  # torch's allocator refuses past the cap
    assert "memory limit" in v.hint


def test_a_rank_that_does_not_take_its_inputs_is_a_time_out_within_the_limit(tmp_path):
    """The harness sends without blocking and times from the first byte: rank 1, which stops reading its connection,
    holds nothing up. Its inputs are larger than a socket buffer (a blocking send would wait forever)."""
    import torch

    from autograder.session import Job

    (tmp_path / "stalls.py").write_text(control("harness", "stops_reading_its_inputs").read_text())
    with Job(world_size=2, profile=_profile(), module="stalls.py", sources=tmp_path, label="t") as job:
        assert job.ready(60) is None
        inputs = [{"tensor": torch.full((2**21,), float(r))} for r in range(2)]   # 8 MB each
        sent = time.monotonic()
        result = job.run("torchrun.mean", inputs, time_limit=10)
        assert time.monotonic() - sent < 15 and result.timed_out and result.unread == [1], result


def test_ranks_are_forked_from_torchrun_on_linux_and_fresh_interpreters_elsewhere(monkeypatch):
    """Linux: torchrun forks each rank from its own process (torch imported once per job), and in a sandbox the
    rank makes its own /tmp; macOS (a fork after its frameworks loaded can crash): a fresh interpreter per rank."""
    import sys

    from autograder.session import Job

    monkeypatch.setattr(sys, "platform", "linux")
    with Job(world_size=2, profile=_profile(), module=None, sources=None, label="t", sandboxed=True) as job:
        cmd = job._command()
    script = next(i for i, arg in enumerate(cmd) if arg.endswith("rank/forked.py"))
    assert {"--run-path", "--start-method=fork"} <= set(cmd[:script]) and "--no-python" not in cmd, cmd
    assert cmd[script + 2] == "--tmp", cmd   # after the job folder: its own /tmp
    monkeypatch.setattr(sys, "platform", "darwin")
    with Job(world_size=2, profile=_profile(), module=None, sources=None, label="t", sandboxed=False) as job:
        cmd = job._command()
    assert "--no-python" in cmd and "--run-path" not in cmd and "--start-method=fork" not in cmd, cmd
    assert cmd[cmd.index("--standalone") + 1:][:2] == [sys.executable, "-I"], cmd   # each rank a new interpreter


def test_ranks_share_their_scratch_folder_but_not_tmp_or_shm(tmp_path):
    """Each rank's /tmp and /dev/shm are its own (gloo); the scratch folder is shared, as a cluster's file system."""
    import torch

    from autograder.session import Job
    from conftest import require_sandbox

    require_sandbox()
    (tmp_path / "looks.py").write_text(control("harness", "looks_for_other_ranks_files").read_text())
    with Job(world_size=2, profile=_profile(), module="looks.py", sources=tmp_path, label="t", sandboxed=True) as job:
        assert job.ready(60) is None
        result = job.run("torchrun.mean", [{"tensor": torch.ones(2)} for _ in range(2)], time_limit=60)
        assert result.complete, result
        seen = [o.result["result"].tolist() for o in result.outcomes]
        assert seen == [[0.0, 0.0, 1.0]] * 2, f"other ranks' files seen in /tmp, /dev/shm, scratch: {seen}"


def test_memory_of_a_rank_counts_what_it_started(tmp_path):
    """A child that holds 300 MB while the rank's task runs is the rank's memory (its process tree is read)."""
    import torch

    from autograder.session import Job

    (tmp_path / "child.py").write_text(control("harness", "trains_in_a_child").read_text())
    with Job(world_size=2, profile=_profile(), module="child.py", sources=tmp_path, label="t") as job:
        assert job.ready(60) is None
        result = job.run("torchrun.mean", [{"tensor": torch.ones(2)} for _ in range(2)], time_limit=60,
                         measure_memory=True)
        assert result.complete, result
        grew = [peak - start for peak, start in zip(result.peak_rss, result.start_rss)]
        assert all(g > 250 * 2**20 for g in grew), grew


@pytest.fixture(params=[True, False], ids=["pidfds", "old-kernel"])
def pidfds(request, monkeypatch):
    """Both ways of pinning a process: pidfds (Linux 5.3+) and the pid checked just before (RHEL 8's 4.18)."""
    from autograder import launch

    if request.param and not launch.PIDFDS:
        pytest.skip("this kernel has no pidfds")
    monkeypatch.setattr(launch, "PIDFDS", request.param)


def test_stop_tree_kills_a_whole_tree_that_forks_and_leaves_its_session(pidfds):
    import subprocess

    from autograder.launch import stop_tree, trees

    job = subprocess.Popen(["sh", "-c", "setsid sleep 60 & sleep 60 & wait"])
    time.sleep(0.3)
    tree = trees([job.pid])[job.pid]
    assert len(tree) == 3, tree
    assert stop_tree(job, grace=5) == []
    alive = [p for p in tree if _live(p)]
    assert job.returncode is not None and not alive, alive


def _live(pid: int) -> bool:
    """Whether pid is a running process (a zombie waiting for init to reap it has ended)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_stopping_a_reaped_job_leaves_the_process_that_got_its_pid_alone(pidfds):
    """Pids are reused once freed (32768 of them here, threads included): a job whose process was already reaped
    must not be walked from its old pid, which may name someone else's process (with its own children) by now."""
    import subprocess

    from autograder.launch import stop_tree, trees

    job = subprocess.Popen(["true"])
    job.wait()                                        # reaped: its pid is free
    other = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        time.sleep(0.3)
        job.pid = other.pid                           # what a pid reuse looks like from the job's side
        assert stop_tree(job, grace=2) == []
        assert other.poll() is None and len(trees([other.pid])[other.pid]) == 2   # sh and its sleep, untouched
    finally:
        subprocess.run(["pkill", "-P", str(other.pid)])   # its sleep first: once sh is gone it has a new parent
        other.kill()
        other.wait()


def test_a_sweep_kills_only_processes_that_still_carry_the_token(monkeypatch, pidfds):
    """Between the scan of /proc and the kill a found process may exit and its pid go to another process: the sweep
    reads the token again through a pidfd (which names one process only) before it kills."""
    import subprocess

    from autograder import launch

    other = subprocess.Popen(["sleep", "30"])        # carries no token
    try:
        calls = iter([[other.pid], []])
        monkeypatch.setattr(launch, "processes_with_env", lambda name, value: next(calls))
        assert launch.sweep("a-token") == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def _rank_under_script_store(rank: int, port: int, delay: float, log) -> None:
    """One rank of a script run: enter script_store after `delay` s, record when, init and sum a tensor."""
    import torch
    import torch.distributed as dist

    from autograder.rank.toolkit import script_store

    time.sleep(delay)
    with script_store(port, rank, 2):
        log.put((rank, "started", time.monotonic()))
        dist.init_process_group("gloo")
        x = torch.ones(1)
        dist.all_reduce(x)
        dist.destroy_process_group()
    log.put((rank, "sum", x.item()))


def test_a_script_run_starts_only_once_its_store_is_up():
    """A rank that reaches a run before rank 0 must not meet a refused connection (TCPStore's retry waits
    0.3-0.6 s: a random stall in a timed half-second run): it enters the run after rank 0 has hosted the store."""
    import multiprocessing

    from autograder.launch import free_port

    forked = multiprocessing.get_context("fork")
    log, port = forked.Queue(), free_port()
    ranks = [forked.Process(target=_rank_under_script_store, args=(r, port, 0.5 if r == 0 else 0.0, log))
             for r in (0, 1)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    events = {(r, what): value for r, what, value in (log.get(timeout=5) for _ in range(4))}
    assert events[0, "sum"] == events[1, "sum"] == 2.0
    # rank 0 enters 0.5 s late; rank 1 may start the moment the store listens, a little before rank 0 logs it
    assert events[1, "started"] >= events[0, "started"] - 0.1, "rank 1 started its run before rank 0 hosted the store"


def test_a_rank_whose_rank_0_has_gone_does_not_wait_for_the_store():
    """A script that fails at once (a blank stub) ends rank 0's run, and its store, before another rank arrives:
    that rank goes on into the script after `patience`, instead of waiting out the store's timeout."""
    from autograder.launch import free_port
    from autograder.rank.toolkit import script_store

    entered = []
    with script_store(free_port(), rank=1, world=2, timeout=60.0, patience=0.2):
        entered.append(True)
    assert entered
