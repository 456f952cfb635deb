"""A /tmp (and /dev/shm) of this rank's own, made inside the rank's process before anything else runs.

Ranks are forked from torchrun's process (rank/forked.py), so there is no new program to wrap in a nested
bubblewrap; this does what that nested bubblewrap did, with the same system calls: a user namespace of the
sandbox's user with a mount namespace, a size-capped tmpfs over /tmp (and /dev/shm), the folders under /tmp
that the sandbox shows bound again over it, every other mount left as it is (read-only ones stay read-only),
and then every capability dropped, so that the rank cannot unmount its tmpfs to look underneath. Called while
the process has one thread (unshare refuses a user namespace to a threaded process).
"""
from __future__ import annotations

import ctypes
import os
import stat

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_SLAVE = 2, 4, 4096, 16384, 1 << 19
PR_SET_NO_NEW_PRIVS = 38
CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _ok(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _tmpfs(where: str, size: int) -> None:
    _ok(_libc.mount(b"tmpfs", where.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}".encode()),
        f"tmpfs on {where}")


def _drop_capabilities() -> None:
    """No capability left (effective, permitted, inheritable), and none to be gained by running a program."""
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    _ok(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _ok(_libc.capset(ctypes.byref(Header(CAPABILITY_VERSION_3, 0)), ctypes.byref((Data * 2)())), "capset")


def own_tmp(*, tmp_bytes: int, shm_bytes: int, keep: list[str]) -> None:
    """/tmp (and, with shm_bytes, /dev/shm) fresh and this process's alone; `keep`: folders and files under /tmp
    that the sandbox shows (the job folder; the Python install and the package when the course lies under /tmp),
    bound again."""
    uid, gid = os.getuid(), os.getgid()
    _ok(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _ok(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "mounts made slaves (nothing propagates out)")
    kept = {path: os.open(path, os.O_PATH) for path in keep}   # this namespace's mounts, reachable once covered
    _tmpfs("/tmp", tmp_bytes)
    for path, fd in kept.items():   # a mount point like what it covers: a folder, or a file (the package's __init__)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _ok(_libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
        os.close(fd)
    if shm_bytes:
        _tmpfs("/dev/shm", shm_bytes)
    _drop_capabilities()
