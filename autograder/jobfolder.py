"""The folder of one torchrun job, the only place a job touches on the host.

    JOB/socket              the harness listens here; every rank driver connects once
    JOB/src/                the learner's .py files, copied (read-only inside the sandbox)
    JOB/logs/rank<N>.log    rank N's stdout and stderr (created here; the rank may only write them)
    JOB/stacks/rank<N>.txt  rank N's Python stack, written when the harness asks (time-out)
    JOB/agent.log           torchrun's own output
    JOB/scratch/            the job's writable folder (a size-capped tmpfs inside the sandbox)

Nothing a rank writes here is evidence: logs and stacks are shown to the learner (escaped,
cut to a size), results travel over the socket and are judged by the harness.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOG_TAIL = 4000
SOURCE_LIMIT = 2 * 2**20   # bytes of learner .py files copied into a job


@dataclass(frozen=True)
class JobFolder:
    path: Path

    @classmethod
    def create(cls, label: str, world_size: int, *, owner: int | None = None) -> "JobFolder":
        """A fresh folder for `world_size` ranks; `owner` (a uid) may write the logs, stacks and scratch.

        Private: other users cannot list it or read its sources (the reference solution's, for a measured check's
        reference job). With an `owner` (the sandbox user, as root) the folder is traversable and src/ belongs to
        it; without one (a user namespace of our own user) the folder is ours alone."""
        path = Path(tempfile.mkdtemp(prefix=f"course-{label}-"))
        os.chmod(path, 0o700 if owner is None else 0o711)
        folder = cls(path)
        for sub in ("src", "logs", "stacks", "scratch"):
            (path / sub).mkdir()
        if owner is not None:
            os.chown(path / "src", owner, -1)
            os.chmod(path / "src", 0o700)
        for rank in range(world_size):
            for f in (folder.log(rank), folder.stack(rank)):
                f.touch()
                if owner is not None:
                    os.chown(f, owner, -1)
        if owner is not None:
            os.chown(path / "scratch", owner, -1)
        return folder

    @property
    def socket(self) -> Path:
        return self.path / "socket"

    @property
    def src(self) -> Path:
        return self.path / "src"

    @property
    def scratch(self) -> Path:
        return self.path / "scratch"

    @property
    def agent_log(self) -> Path:
        return self.path / "agent.log"

    def log(self, rank: int) -> Path:
        return self.path / "logs" / f"rank{rank}.log"

    def stack(self, rank: int) -> Path:
        return self.path / "stacks" / f"rank{rank}.txt"

    def copy_sources(self, folder: Path) -> None:
        """The learner's .py files (the module and what it imports), up to SOURCE_LIMIT bytes in all."""
        total = 0
        for f in sorted(folder.glob("*.py")):
            if not f.is_file():
                continue
            total += f.stat().st_size
            if total > SOURCE_LIMIT:
                break
            shutil.copyfile(f, self.src / f.name)

    def write_sources(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.src / Path(name).name).write_text(text)

    def tail(self, path: Path, limit: int = LOG_TAIL) -> str:
        """The last `limit` bytes of a file the ranks wrote (decoded leniently)."""
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return ("[... earlier output cut ...]\n" + text) if size > limit else text

    def size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def dump_stacks(self, pids: dict[int, int], still_ours: Callable[[int], bool]) -> None:
        """Ask these ranks (rank -> pid) for their Python stacks (faulthandler writes stacks/rank<N>.txt on SIGUSR1)
        and wait up to 2 s for them. Only pids for which still_ours(pid) holds are signalled (a rank that exited has
        left its pid to the next process, for which SIGUSR1 means "terminate")."""
        from .launch import signal_if

        asked = [rank for rank, pid in pids.items() if signal_if(pid, signal.SIGUSR1, lambda: still_ours(pid))]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not all(self.size(self.stack(r)) for r in asked):
            time.sleep(0.05)
        time.sleep(0.1)   # let faulthandler finish its last lines

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
