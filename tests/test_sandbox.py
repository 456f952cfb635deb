"""The sandbox every learner process runs in while grading (and wherever bubblewrap works): what it hides,
what it refuses, and that nothing survives it. Small commands in the sandbox, no torch.

These tests fail, never skip, where no sandbox can be made: CI must have one (`make setup` installs it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from autograder import cgroups, sandbox
from autograder.config import course_root
from autograder.jobfolder import JobFolder
from conftest import require_sandbox


@pytest.fixture
def run(tmp_path):
    """Run Python code in a rank sandbox (view "rank", or "kernel"); (returncode, stdout + stderr)."""
    require_sandbox()
    folders: list[JobFolder] = []

    def _run(code: str, *, view: str = "rank", timeout: float = 60, scratch_bytes: int = 64 * 2**20,
             confine: sandbox.Sandbox | None = None):
        job = JobFolder.create("sbx", 1, owner=sandbox.Sandbox.owner())
        folders.append(job)
        inner = [sys.executable, "-I", "-c", code]
        cmd = (confine or sandbox.Sandbox(package=view)).command(inner, env={"PATH": "/usr/bin:/bin", "HOME": str(job.scratch)},
                                                    readable=[job.path], scratch=job.scratch,
                                                    scratch_bytes=scratch_bytes, chdir=job.scratch,
                                                    writable_files=[job.log(0)])
        groups = cgroups.make()
        proc = sandbox.popen(cmd, groups=groups, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
            proc.wait()
            cgroups.kill_and_remove(groups)
        return proc.returncode, out

    yield _run
    for job in folders:
        job.remove()


def test_the_course_home_and_other_folders_are_hidden(run):
    code = (f"import os; print(sorted(os.listdir({str(course_root())!r})), os.path.exists({str(course_root() / 'source')!r}),"
            f" os.listdir(os.path.expanduser('~root')) if os.path.exists(os.path.expanduser('~root')) else None)")
    rc, out = run(code)
    assert rc == 0, out
    assert "False" in out and "'source'" not in out and "'release'" not in out


def test_the_sandbox_init_names_no_hidden_host_path(run, tmp_path):
    """PID 1 inside is bubblewrap itself; its command line is readable there. Its options (which host folders are
    hidden, which files are shown) reach it through a memory file: no hidden folder is named in it."""
    hidden = tmp_path / "submissions-of-the-class"
    hidden.mkdir()
    rc, out = run("print(open('/proc/1/cmdline').read().replace(chr(0), ' '))",
                  confine=sandbox.Sandbox(hide=(hidden,)))
    assert rc == 0 and "bwrap --args " in out, out
    assert str(hidden) not in out and str(course_root() / "source") not in out and "--tmpfs" not in out, out


def test_the_rank_side_is_importable_and_the_checks_are_not(run):
    rc, out = run("import autograder.rank.wire\ntry:\n    import autograder.checks\nexcept ImportError as e:\n"
                  "    print('hidden:', type(e).__name__)")
    assert rc == 0 and "hidden: ModuleNotFoundError" in out, out


def test_the_kernel_sees_the_checks_but_not_their_references(run):
    rc, out = run("import autograder.checks.concepts.memory as m\nfrom pathlib import Path\n"
                  "try:\n    print('read', len(Path(m.__file__).with_name('reference.py').read_text()))\n"
                  "except OSError as e:\n    print('refused', type(e).__name__)\n"
                  "try:\n    from autograder.checks.concepts import reference\n    print(reference.memory(1))\n"
                  "except Exception as e:\n    print('no reference', type(e).__name__)", view="kernel")
    assert rc == 0 and ("read 0" in out or "refused" in out) and "no reference" in out, out


def test_the_install_is_read_only(run):
    import autograder

    target = Path(autograder.__file__)
    rc, out = run(f"open({str(target)!r}, 'a').write('# persisted')")
    assert rc != 0 and ("Read-only file system" in out or "Permission denied" in out), out
    assert "# persisted" not in target.read_text()


def test_only_its_own_processes_and_loopback_are_visible(run):
    rc, out = run("import os, socket\nprint('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
                  "print('ifaces', sorted(name for _, name in socket.if_nameindex()))")
    assert rc == 0, out
    pids = eval(out.split("pids", 1)[1].splitlines()[0])
    assert max(pids) < 50 and os.getpid() not in pids          # a PID namespace of its own
    assert "ifaces ['lo']" in out


SEND_AFTER_A_PAUSE = """
import socket, threading, time
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
def drain(n):
    while n:
        n -= len(peer.recv(min(n, 65536)))
warm = threading.Thread(target=drain, args=(4096,)); warm.start(); client.sendall(b"w" * 4096); warm.join()
time.sleep(1.0)                      # a quiet moment, as between two buckets of a backward
start = time.perf_counter()
reader = threading.Thread(target=drain, args=(100_000,)); reader.start(); client.sendall(b"x" * 100_000); reader.join()
import fcntl, struct                 # SIOCGIFMTU (/sys/class/net shows the host's interfaces)
mtu = struct.unpack("i", fcntl.ioctl(client, 0x8921, struct.pack("16s16x", b"lo"))[16:20])[0]
print("mtu", mtu, "seconds", round(time.perf_counter() - start, 3))
"""


def test_a_shaped_loopback_is_a_link_that_earns_no_credit_while_quiet(run):
    """scratch.bucketed's measurement: 100 KB at 2 Mbit/s take 0.4 s, also right after a pause (a token bucket
    with a large burst would let most of it through at once: synchronous hooks then looked like overlap)."""
    if os.geteuid() != 0:
        pytest.skip("shaping the loopback needs root")
    rc, out = run(SEND_AFTER_A_PAUSE, confine=sandbox.Sandbox(shape_loopback="rate 2mbit burst 4kb latency 400ms",
                                                              loopback_mtu=1500))
    assert rc == 0 and "mtu 1500" in out, out
    assert float(out.split("seconds")[1]) >= 0.3, out    # a lower bound: a busy machine only adds time


AS_ANOTHER_USER = """
import subprocess, sys
from autograder import sandbox
box = sandbox.Sandbox(shape_loopback="rate 2mbit burst 4kb latency 400ms", loopback_mtu=1500)
print("shaping problem:", sandbox.shaping_problem())
cmd = box.command([sys.executable, "-I", "-c", sys.argv[1]], env={"PATH": "/usr/bin:/bin"}, chdir=None)
proc = sandbox.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
print(proc.communicate(timeout=60)[0])
"""
LIFT = "\nimport subprocess\nprint('lift', subprocess.run(['/usr/sbin/tc', 'qdisc', 'del', 'dev', 'lo', 'root']).returncode)\n"


def test_without_root_the_loopback_is_shaped_in_a_namespace_the_learner_cannot_lift():
    """The Docker image's `student` (or any user): unshare gives the job a network namespace of its own user
    namespace, shaped there; the learner's code, in bwrap's user namespace inside it, cannot remove the shaping.
    Run as nobody, with the system's Python (the venv's base interpreter may sit in root's home)."""
    require_sandbox()
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root (the tests above cover this user's own sandbox)")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                           AS_ANOTHER_USER, SEND_AFTER_A_PAUSE + LIFT], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(sandbox.__file__).parents[1])})
    out = done.stdout + done.stderr
    assert "shaping problem: None" in out and "mtu 1500" in out, out
    assert float(out.split("seconds")[1].split()[0]) >= 0.3, out   # 100 KB at 2 Mbit/s, after a pause
    assert "lift 2" in out, out                                      # tc: Operation not permitted


def test_a_full_scratch_folder_is_a_clean_error_not_a_full_disk(run):
    code = ("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'wb').write(b'x' * 2**20)\n        n += 1\n"
            "except OSError as e:\n    print('stopped after', n, 'MiB:', e.strerror)")
    rc, out = run(code, scratch_bytes=16 * 2**20)
    assert rc == 0 and "No space left on device" in out and int(out.split("after ")[1].split()[0]) <= 16, out


def test_a_daemon_that_left_the_session_dies_with_the_sandbox(run):
    marker = f"DAEMON-{uuid.uuid4().hex[:8]}"
    rc, out = run("import subprocess\nsubprocess.Popen(['env', '-i', 'setsid', 'python3', '-c', "
                  f"'import time; time.sleep(120)  # {marker}'])\nprint('spawned')")
    assert rc == 0 and "spawned" in out, out
    time.sleep(0.5)
    alive = [p for p in os.listdir("/proc") if p.isdigit() and marker.encode() in _cmdline(p)]
    assert alive == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_processes_are_limited(run):
    if not cgroups.available():
        pytest.skip("no writable pids cgroup here (not root): the time limit and namespaces still apply")
    code = ("import os\nn = 0\ntry:\n    for _ in range(2000):\n        if os.fork() == 0:\n"
            "            import time; time.sleep(30); os._exit(0)\n        n += 1\n"
            "except OSError as e:\n    print('forks refused after', n)")
    rc, out = run(code)
    assert "forks refused after" in out and int(out.split("after ")[1].split()[0]) < cgroups.PROCESSES, out


def test_a_job_folder_is_private_to_the_grader_and_the_sandbox_user(tmp_path):
    """The sources in a job folder (the reference solution's, for a measured check) are readable by the sandbox user
    and the grader only; every other user can at most traverse the folder."""
    import stat

    from autograder.jobfolder import JobFolder
    from autograder.sandbox import Sandbox

    owner = Sandbox.owner() if os.geteuid() == 0 else None
    folder = JobFolder.create("private", 2, owner=owner)
    try:
        assert stat.S_IMODE(folder.path.stat().st_mode) & 0o066 == 0   # others cannot list it
        src = folder.src.stat()
        assert stat.S_IMODE(src.st_mode) & 0o077 == 0 and src.st_uid == (owner if owner is not None else os.getuid())
    finally:
        folder.remove()
    assert not folder.path.exists()


def test_a_ranks_own_tmp_binds_again_what_the_sandbox_shows_under_tmp():
    """A course cloned under /tmp: the job's Python install and package are under the /tmp that each rank gets
    afresh, so own_tmp binds them again (the outermost of nested paths; nothing outside /tmp)."""
    keep = [Path("/tmp/fresh/.venv"), Path("/tmp/fresh/.venv/lib/python3.11/site-packages"),
            Path("/tmp/fresh/autograder/rank"), Path("/tmp/job-1"), Path("/usr/lib/python3.11")]
    args = sandbox.own_tmp(keep=keep, shm=True)
    binds = [args[i + 1] for i, a in enumerate(args) if a == "--keep"]
    assert binds == ["/tmp/job-1", "/tmp/fresh/.venv", "/tmp/fresh/autograder/rank"], binds
    assert args[:4] == ["--tmp", str(sandbox.TMP_BYTES), "--shm", str(sandbox.SHM_BYTES)], args
    assert "--shm" not in sandbox.own_tmp(keep=keep, shm=False)   # NCCL's ranks share the node's /dev/shm


def test_a_forked_rank_gets_its_own_tmp_with_what_it_must_keep_and_cannot_undo_it(tmp_path):
    """rank/owntmp.py in a forked child, as a rank does it: a kept folder and a kept file (the package's __init__
    when the course lies under /tmp) are there, nothing else of /tmp is, what it writes stays its own, and with every
    capability dropped it cannot unmount its tmpfs to reach the shared /tmp beneath."""
    import ctypes

    from autograder.rank import owntmp

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "inside.txt").write_text("kept")
    (tmp_path / "__init__.py").write_text("# kept file")
    (tmp_path / "elsewhere.txt").write_text("not kept")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child reports through the pipe and never returns into pytest
        try:
            os.close(read)
            owntmp.own_tmp(tmp_bytes=2**20, shm_bytes=2**20, keep=[str(tmp_path / "kept"), str(tmp_path / "__init__.py")])
            libc = ctypes.CDLL(None, use_errno=True)
            Path("/tmp/left-by-the-rank").write_text("x")
            seen = dict(kept=(tmp_path / "kept" / "inside.txt").read_text(), file=(tmp_path / "__init__.py").read_text(),
                        elsewhere=(tmp_path / "elsewhere.txt").exists(), shm=os.listdir("/dev/shm"),
                        unmounted=libc.umount2(b"/tmp", 2) == 0 or libc.umount2(b"/dev/shm", 2) == 0)
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert seen == dict(kept="kept", file="# kept file", elsewhere=False, shm=[], unmounted=False), seen
    assert not Path("/tmp/left-by-the-rank").exists()
