"""A real Slurm for the tests: munged, slurmctld and slurmd from Debian's packages (`make slurm` installs them),
configured for this machine as one node and started as root in a folder of their own.

The configuration is the one checked in ../shared/COURSE_DESIGN.md (facts): SlurmUser root,
proctrack/linuxproc, task/none, cons_tres with CR_CPU. Its own munge socket and ports, so a
Slurm the machine may already run is not touched. `sacct` needs slurmdbd, which is not run:
the course does not use it.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from autograder.launch import signal_if

DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = Path("/usr/sbin")


def why_not() -> str | None:
    """Why a local Slurm cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "starting Slurm's daemons needs root"
    missing = [d for d in DAEMONS if not (SBIN / d).exists()] + [c for c in ("sbatch", "squeue") if not shutil.which(c)]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; `make slurm` installs it as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "the munge user is missing (Debian's munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, munge: Path, node: str, cpus: int) -> str:
    return "\n".join([
        "ClusterName=course-test", f"SlurmctldHost={node}",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={munge}/munge.sock", "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        "MpiDefault=none", "ReturnToService=2", "InactiveLimit=0", "JobCompType=jobcomp/none",
        "KillWait=5",          # seconds between SIGTERM and SIGKILL at a time limit (default 30)
        "MinJobAge=600",       # ended jobs stay visible to squeue for 10 min
        f"NodeName={node} CPUs={cpus} State=UNKNOWN",
        "PartitionName=course Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


def _daemon_env() -> dict[str, str]:
    """A plain environment: the daemons must not carry a test's tag (conftest would call them leftovers)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C.UTF-8"}


@contextlib.contextmanager
def local_cluster(folder: Path, cpus: int = 2) -> Iterator[dict[str, str]]:
    """Start a one-node Slurm in `folder`; yields the environment its clients need ({"SLURM_CONF": ...})."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    # munged runs as the munge user: its folder must be reachable by it (pytest's are private to root), and its
    # socket's path short (a Unix socket's name has at most 107 bytes).
    munge = Path(tempfile.mkdtemp(prefix="course-munge-"))
    (munge / "munge.key").write_bytes(os.urandom(1024))
    uid, gid = pwd.getpwnam("munge")[2:4]
    for path, mode in ((munge, 0o700), (munge / "munge.key", 0o400)):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, munge, node, cpus))
    env = {**_daemon_env(), "SLURM_CONF": str(conf)}
    started: list[Path] = []
    try:
        subprocess.run(["runuser", "-u", "munge", "--", str(SBIN / "munged"), f"--key-file={munge}/munge.key",
                        f"--socket={munge}/munge.sock", f"--pid-file={munge}/munged.pid",
                        f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed", "--force"],
                       env=env, check=True, timeout=30)
        started.append(munge / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([str(SBIN / daemon), "-f", str(conf)], env=env, check=True, timeout=30)
            started.append(folder / f"{daemon}.pid")
        _wait_until_idle(env, folder)
        yield {"SLURM_CONF": str(conf)}
    finally:
        outlived = [pid_file.stem for pid_file in reversed(started) if not _stop(pid_file)]
        shutil.rmtree(munge, ignore_errors=True)
        assert not outlived, f"the local Slurm's daemons outlived it: {outlived}"


def _wait_until_idle(env: dict[str, str], folder: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True)
        if done.stdout.strip() == "idle":
            return
        time.sleep(0.5)
    logs = "".join((folder / f"{d}.log").read_text()[-1500:] for d in ("slurmctld", "slurmd")
                   if (folder / f"{d}.log").exists())
    raise RuntimeError(f"the local Slurm did not become idle within {seconds:.0f} s:\n{logs}")


def _stop(pid_file: Path, seconds: float = 20) -> bool:
    """Stop the daemon whose pid `pid_file` holds; whether it is gone."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return True

    def still_the_daemon() -> bool:   # a daemon that died earlier left its pid to some other process
        try:
            return pid_file.stem.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()   # munged, slurmctld, slurmd
        except OSError:
            return False

    if not signal_if(pid, signal.SIGTERM, still_the_daemon):
        return True
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    signal_if(pid, signal.SIGKILL, still_the_daemon)
    time.sleep(0.2)
    return not (_alive(pid) and still_the_daemon())


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()   # a zombie has ended
    except OSError:
        return False
