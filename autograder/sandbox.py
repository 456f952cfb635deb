"""Bubblewrap around every process that runs learner code: own PID, mount, network and IPC namespaces,
a read-only system, and no view of the course, the submissions or the grader.

What a sandboxed job sees and may do:
- the system, the Python install and the rank side of the package (autograder/rank, eurosat),
  read-only; the rest of the package (checks, references), the course folder (source/,
  release/, grading output), HOME and every path the caller hides are empty folders;
- its own job folder, read-only, except its rank logs and stacks, and a size-capped scratch
  folder, /tmp and /dev/shm (tmpfs: a full disk is impossible); each rank of a job has a /tmp of
  its own, and with gloo a /dev/shm of its own (`own_tmp`);
- loopback networking only (torchrun and gloo work; nothing leaves the machine);
- as root: it runs as the unprivileged user `course-sandbox`; otherwise in a user
  namespace of the grader's own user (which sees only what is listed above);
- at most cgroups.PROCESSES processes and cgroups.MEMORY_BYTES of memory (cgroups.py, as root where they can be made;
  RLIMIT_AS per rank and the time limits apply everywhere);
- killing the sandbox (bwrap) kills everything in it: it is PID 1's namespace, which no
  child can leave (setsid and double forks stay inside).

COURSE_SANDBOX=auto (default: use it where it works), on (required), off (never).
"""
from __future__ import annotations

import functools
import glob
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from . import cgroups

MODE_ENV = "COURSE_SANDBOX"
HIDE_ENV = "COURSE_SANDBOX_HIDE"   # more folders every sandbox hides (os.pathsep-separated)
USER = "course-sandbox"
TMP_BYTES = 512 * 2**20
SHM_BYTES = 1024 * 2**20
SCRATCH_BYTES = 1024 * 2**20


class SandboxUnavailable(RuntimeError):
    """The sandbox was required but cannot be made here; the message says why and what to do."""


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").lower()
    return value if value in ("auto", "on", "off") else "auto"


@functools.lru_cache(maxsize=None)
def problem() -> str | None:
    """Why no sandbox can be made on this machine (None: it can)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this is {sys.platform}"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; `make setup` does it as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"the unprivileged user {USER!r} does not exist (`make setup` creates it as root)"
    probe = [bwrap, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "--unshare-net",
             "--unshare-ipc", "--die-with-parent"] + ([] if os.geteuid() == 0 else ["--unshare-user"]) + ["true"]
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        return ("bubblewrap cannot create namespaces here (a container without user namespaces?): "
                + done.stderr.decode(errors="replace").strip()[:300])
    return None


@functools.cache
def shaping_problem() -> str | None:
    """Why a job's loopback cannot be shaped here (None: it can): as root tc runs inside bwrap's network namespace;
    without root it needs unprivileged user namespaces that own a network namespace (most Linux hosts; not every
    container) and tc (iproute2)."""
    if problem():
        return "no sandbox: " + problem()
    if not os.path.exists(_sbin("tc")):
        return "tc (iproute2) is not installed"
    if os.geteuid() == 0:
        return None
    probe = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net", "/bin/sh", "-c",
             f"{_sbin('ip')} link set lo up && {_sbin('tc')} qdisc add dev lo root tbf rate 1mbit burst 4kb latency 10ms"]
    try:
        done = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare could not start: {exc}"
    if done.returncode != 0:
        return ("this machine does not let an unprivileged user shape a network namespace of its own: "
                + done.stderr.decode(errors="replace").strip()[:200])
    return None


def enabled() -> bool:
    """Whether jobs run sandboxed now; SandboxUnavailable when it is required and cannot be had."""
    chosen = mode()
    if chosen == "off":
        return False
    why = problem()
    if why and chosen == "on":
        raise SandboxUnavailable(f"a sandbox is required ({MODE_ENV}=on) but {why}")
    return why is None


# ------------------------------------------------------------------ what is visible inside

def _package_dir(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _python_dirs() -> list[Path]:
    """The interpreter and its libraries: what `python -I -m autograder.rank` needs."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]))
    return sorted(p.resolve() for p in paths if p.exists())


def _hidden_by_default() -> list[Path]:
    from .config import course_root

    home = Path(os.path.expanduser("~"))
    candidates = [course_root(), home, Path("/root"), Path("/home"), Path("/var/tmp"), Path("/work"),
                  Path("/srv"), Path("/mnt"), Path("/media"), Path("/opt/course")]
    # The grading parent names its output and the submissions folder here (every job it starts inherits it).
    candidates += [Path(p) for p in os.environ.get(HIDE_ENV, "").split(os.pathsep) if p]
    return [p.resolve() for p in candidates if p.exists()]


@dataclass(frozen=True)
class Sandbox:
    """What one sandboxed command may see and write (see the module docstring)."""
    hide: tuple[Path, ...] = ()            # more folders to hide (grading output, submissions)
    expose: tuple[Path, ...] = ()          # more paths to show read-only (a prepared dataset, a template)
    # tc tbf arguments for lo, e.g. "rate 60mbit burst 4kb latency 100ms" (as root only), and lo's MTU for it:
    # tbf drops a packet larger than its burst (it splits only GSO packets), so a small burst needs a small MTU
    shape_loopback: str | None = None
    loopback_mtu: int | None = None
    package: str = "rank"                  # "rank": only autograder/rank; "kernel": all but the references

    def command(self, inner: list[str], *, env: dict[str, str], readable: list[Path] = (),
                writable_files: list[Path] = (), scratch: Path | None = None, scratch_bytes: int = SCRATCH_BYTES,
                chdir: Path | None = None) -> list[str]:
        """bwrap ... -- inner: `readable` read-only, `writable_files` writable (they must exist), `scratch` a
        size-capped tmpfs (the only writable folder besides /tmp and /dev/shm)."""
        root = os.geteuid() == 0
        # Without root a shaped loopback needs a network namespace of the job's own user namespace (which may shape
        # it), made by unshare around bwrap; bwrap's user namespace inside it has no rights on it (the learner's code
        # cannot lift the shaping).
        outside = self._shaping_namespace() if self.shape_loopback and not root else []
        args = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--unshare-pid",
                "--unshare-ipc", *([] if outside else ["--unshare-net"]), "--unshare-uts", "--unshare-cgroup-try",
                "--hostname", "localhost"]
        if not root:
            args += ["--unshare-user", "--uid", str(os.getuid()), "--gid", str(os.getgid())]
        args += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        for device in sorted(glob.glob("/dev/nvidia*")):
            args += ["--dev-bind-try", device, device]
        args += ["--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
                 "--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
        package = _package_dir("autograder")
        hidden = sorted({*_hidden_by_default(), *(p.resolve() for p in self.hide), package}, key=lambda p: len(p.parts))
        for folder in hidden:
            args += ["--perms", "0755", "--tmpfs", str(folder)]
        shown = self.shown(readable)
        # Folders between a hidden (empty) folder and what is shown in it: traversable, whatever the host's mode.
        fresh = [*hidden, Path("/tmp")]   # bubblewrap would make these folders' missing children owner-only
        between = sorted({a for p in shown for a in p.parents if any(h in a.parents or h == a for h in fresh)}
                         - set(fresh) - set(shown), key=lambda p: len(p.parts))
        for folder in between:
            args += ["--perms", "0755", "--dir", str(folder)]
        for path in shown:
            args += ["--ro-bind", str(path), str(path)]
        if self.package == "kernel":   # the grader's reference implementations stay hidden from student code
            for reference in sorted(package.glob("checks/*/reference.py")):
                args += ["--ro-bind", "/dev/null", str(reference)]
        for f in writable_files:
            args += ["--bind", str(f), str(f)]
        if scratch is not None:
            args += ["--perms", "1777", "--size", str(scratch_bytes), "--tmpfs", str(scratch)]
        if chdir is not None:
            args += ["--chdir", str(chdir)]
        args.append("--clearenv")
        if "--" in env.values():
            raise ValueError("an environment value of '--' would end bwrap's options early (sandbox.popen splits there)")
        for key, value in env.items():
            args += ["--setenv", key, value]
        if root:
            drop = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs"]
            if self.shape_loopback:
                mtu = f"{_sbin('ip')} link set lo mtu {self.loopback_mtu} && " if self.loopback_mtu else ""
                args += ["--cap-add", "CAP_NET_ADMIN", "--", "/bin/sh", "-c",
                         f"{mtu}{_sbin('tc')} qdisc add dev lo root tbf {self.shape_loopback} && exec \"$@\"",
                         "sandbox"]
            else:
                args.append("--")
            return args + drop + inner
        return outside + args + ["--"] + inner

    def _shaping_namespace(self) -> list[str]:
        """unshare (a user namespace mapping this user to root, and a network namespace it owns), lo up and shaped,
        then exec of the rest of the command (bwrap)."""
        mtu = f"{_sbin('ip')} link set lo mtu {self.loopback_mtu} && " if self.loopback_mtu else ""
        return [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--net", "/bin/sh", "-c",
                f"{mtu}{_sbin('ip')} link set lo up && {_sbin('tc')} qdisc add dev lo root tbf {self.shape_loopback} "
                "&& exec \"$@\"", "sandbox"]

    def shown(self, readable: list[Path] = ()) -> list[Path]:
        """What the sandbox shows read-only, shortest path first: the Python install, eurosat, the package's rank
        side (all of it but the references for the kernel), `expose` and `readable`."""
        package = _package_dir("autograder")
        shown = {*_python_dirs(), _package_dir("eurosat"), *(p.resolve() for p in self.expose),
                 *(p.resolve() for p in readable)}
        shown |= {package} if self.package == "kernel" else {package / "rank", package / "__init__.py"}
        return sorted(shown, key=lambda p: len(p.parts))

    @staticmethod
    def owner() -> int | None:
        """The uid that must be able to write a sandbox's files (the sandbox user, as root)."""
        return pwd.getpwnam(USER).pw_uid if os.geteuid() == 0 else None


def own_tmp(*, keep: list[Path], shm: bool) -> list[str]:
    """The options of rank/forked.py that give one rank of a job (started inside the job's sandbox) a /tmp, and
    with shm=True a /dev/shm, of its own: nothing a rank leaves there is where another rank looks (the job's
    scratch folder stays shared, as nodes share a file system). The rank makes them in a user namespace of the
    sandbox's user before anything else runs, everything else unchanged (same PIDs, network, files and devices,
    each mount's read-only flag), and then drops every capability (rank/owntmp.py); `keep`: what the sandbox
    shows (Sandbox.shown: the job folder, the Python install, the package's rank side), of which what lies under
    /tmp (a course cloned there) is bound again over the new one. NCCL needs shm=False: its transport between the
    ranks of a node runs through one /dev/shm. Not a wall between colluding ranks: the scratch folder, and another
    process's /proc/PID/root, remain (what a check must prove about communication, it measures: bytes on the
    wire)."""
    args = ["--tmp", str(TMP_BYTES)] + (["--shm", str(SHM_BYTES)] if shm else [])
    tmp = Path("/tmp")
    under_tmp = sorted({p for p in keep if tmp in p.parents}, key=lambda p: len(p.parts))
    for folder in [p for p in under_tmp if not any(q in p.parents for q in under_tmp)]:   # outermost ones
        args += ["--keep", str(folder)]   # recursive: the mounts inside come along
    return args


def _sbin(tool: str) -> str:
    """The path of iproute2's tc or ip: they live in /usr/sbin or /sbin, which the sandbox's PATH (the job's)
    does not list."""
    return (shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
            or f"/usr/sbin/{tool}")


def clean_env(home: Path, keep: tuple[str, ...] = (), **values: str) -> dict[str, str]:
    """The whole environment of a process that runs learner code: this Python's folder first on PATH, `home`
    as HOME, UTF-8, unbuffered output, the caller's values of `keep` (those that are set), then `values`.
    Nothing else of the grader's environment reaches it."""
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
           "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    env.update({key: os.environ[key] for key in keep if key in os.environ})
    env.update(values)
    return env


def popen(cmd: list[str], *, groups: list[Path] = (), cpus: set[int] | None = None, file_limit: int | None = None,
          **kwargs) -> subprocess.Popen:
    """Start `cmd` (a Sandbox.command, or a plain command when unsandboxed) in a session of its own, inside
    `groups` (cgroups, entered before exec, so every later fork is counted), on `cpus`, with at most `file_limit`
    bytes per written file. bwrap's options (the hidden and shown host paths) reach it through a memory file
    (`--args FD`), not its argv: bwrap is the sandbox's PID 1, and /proc/1/cmdline is readable inside; what stays
    in argv is the inner command, whose paths the sandbox shows anyway."""
    groups, pass_fds, args_fd = list(groups), list(kwargs.pop("pass_fds", ())), None
    at = next((i for i, a in enumerate(cmd) if Path(a).name == "bwrap"), None)   # after unshare's prefix, if any
    if at is not None and "--" in cmd[at:]:
        split = cmd.index("--", at)
        args_fd = os.memfd_create("bwrap-args")
        os.write(args_fd, b"".join(a.encode() + b"\0" for a in cmd[at + 1:split]))
        os.lseek(args_fd, 0, os.SEEK_SET)
        cmd, pass_fds = [*cmd[:at + 1], "--args", str(args_fd), *cmd[split:]], pass_fds + [args_fd]

    def in_child():
        cgroups.join(groups)
        if cpus:
            os.sched_setaffinity(0, cpus)
        if file_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    try:
        return subprocess.Popen(cmd, start_new_session=True, preexec_fn=in_child, pass_fds=pass_fds, **kwargs)
    finally:
        if args_fd is not None:
            os.close(args_fd)


def describe(cmd: list[str]) -> str:
    return shlex.join(cmd)
