"""One job of rank drivers (under torchrun, or one plain process), run by the trusted harness.

The harness listens on a Unix socket in the job folder, starts the job (sandboxed where
possible), and then talks to each rank on the connection that rank opened first:

    hello (rank r)  ->  setup                    every rank, before any learner code runs
    import          ->  ok | error               once all ranks have said hello (the barrier)
    task (inputs_r) ->  outputs_r | error        per task, this rank's inputs only

Times are taken here, from outside: a task starts when the last rank's inputs were sent
and ends when the last reply arrived. Memory and bytes on the wire are read from outside too
(meter.py), of the pid the kernel reports for each rank's connection, not one the rank claims.
"""
from __future__ import annotations

import os
import selectors
import shlex
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from . import cgroups, launch, policy, sandbox
from .channel import RankChannel
from .config import Profile
from .jobfolder import JobFolder
from .meter import MemoryWindow, loopback_bytes
from .outcome import RankOutcome, TaskResult, rank_error
from .rank import wire

OUTPUT_LIMIT = 64 * 2**20     # bytes a rank may print (beyond: SIGXFSZ, reported as flooding)
MEMORY_POLL = 0.02            # seconds between /proc reads while a task runs with memory measured


class Job:
    """Start with `start()`, run tasks with `run()`, always `close()` (or use `with`)."""

    def __init__(self, *, world_size: int, profile: Profile, module: str | None, sources: Path | dict | None,
                 label: str = "check", local: bool = False, nnodes: int = 1, cpus: set[int] | None = None,
                 confine: sandbox.Sandbox | None = None, sandboxed: bool | None = None,
                 env: dict[str, str] | None = None):
        self.world_size, self.profile, self.local, self.nnodes = world_size, profile, local, nnodes
        self.extra_env = dict(env or {})   # more variables for every process of the job (e.g. allocator settings)
        self.sandboxed = sandbox.enabled() if sandboxed is None else sandboxed
        self.confine = confine or sandbox.Sandbox()
        self.folder = JobFolder.create(label, world_size, owner=sandbox.Sandbox.owner() if self.sandboxed else None)
        if isinstance(sources, dict):
            self.folder.write_sources(sources)
        elif sources is not None:
            self.folder.copy_sources(sources)
        self.module = str(self.folder.src / module) if module else None
        self.cpus, self.token = cpus, uuid.uuid4().hex
        self.ranks: dict[int, RankChannel] = {}
        self.problem = ""
        self.proc: subprocess.Popen | None = None
        self.cgroups: list[Path] = []
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.folder.socket))
        os.chmod(self.folder.socket, 0o777)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.started_at = 0.0
        self.output_limit = OUTPUT_LIMIT
        self.role = "learner"     # or "reference": the course's own solution, run for comparison

    # -------------------------------------------------------------- start
    def _env(self) -> dict[str, str]:
        env = sandbox.clean_env(self.folder.scratch, ("CUDA_VISIBLE_DEVICES", "COURSE_TEST_ID", "LD_LIBRARY_PATH"),
                                PYTHONDONTWRITEBYTECODE="1",
                                TMPDIR="/tmp" if self.sandboxed else str(self.folder.scratch),
                                **{launch.TOKEN_ENV: self.token})
        env.update(policy.rank_env(self.profile))
        if self.sandboxed:   # the sandbox has only a loopback interface
            env.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
        if self.local:
            env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        env.update(self.extra_env)
        return env

    def _command(self) -> list[str]:
        # -I: no PYTHON* variables, no user site, no current folder on sys.path; the package this harness is
        # (the repository's or a student copy's) is put first explicitly, so both sides run the same code.
        package_parent = str(Path(__file__).resolve().parents[1])
        fresh = [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {package_parent!r}); "
                 "from autograder.rank.__main__ import main; main(sys.argv[1])", str(self.folder.path)]
        if self.local:
            return fresh
        # Under torchrun each rank is forked from torchrun's process where it can be (rank/forked.py: torch is
        # imported there already), else a fresh interpreter.
        forked = launch.forks_ranks()
        driver = [str(Path(__file__).resolve().parent / "rank" / "forked.py"), str(self.folder.path)] if forked else fresh
        if self.sandboxed:   # (Linux only)
            driver += sandbox.own_tmp(keep=self.confine.shown([self.folder.path]), shm=self.profile.backend != "nccl")
        port = 29400 if self.sandboxed else launch.free_port()
        agents = [launch.torchrun_command(self.world_size // self.nnodes, driver, nnodes=self.nnodes,
                                          endpoint=f"127.0.0.1:{port}", run_id=self.token[:8], forked=forked)
                  for _ in range(self.nnodes)]
        if len(agents) == 1:
            return agents[0]
        return ["/bin/sh", "-c", " & ".join(shlex.join(a) for a in agents) + " & wait"]

    def launch(self) -> None:
        """Start the job's processes (they import torch and connect; `ready` waits for them)."""
        env, inner = self._env(), self._command()
        folder = self.folder
        cmd = self.confine.command(inner, env=env, readable=[folder.path], scratch=folder.scratch, chdir=folder.scratch,
                                   writable_files=[f for r in range(self.world_size)
                                                   for f in (folder.log(r), folder.stack(r))]) \
            if self.sandboxed else inner
        self.cgroups = cgroups.make() if self.sandboxed else []
        self.started_at = time.monotonic()
        with open(self.folder.agent_log, "wb") as log:
            self.proc = sandbox.popen(cmd, groups=self.cgroups, cpus=self.cpus, file_limit=OUTPUT_LIMIT,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=self.folder.scratch)

    def ready(self, time_limit: float) -> TaskResult | None:
        """Wait for every rank's hello, then import the learner's module everywhere; a TaskResult if that failed.

        The time limit counts from the launch: start-up and import share it.
        """
        if self.proc is None:
            self.launch()
        deadline = self.started_at + time_limit
        self._pump(deadline, lambda: len(self.ranks) == self.world_size)
        if len(self.ranks) < self.world_size or self.problem:
            return self._result("import", self.started_at, deadline)
        result = self._exchange("import", [{"do": "import"}] * self.world_size, deadline, self.started_at)
        return None if result.complete else result

    def prepare(self, time_limit: float, *, parts: list[str] = (), group: bool = False) -> TaskResult | None:
        """Before the first task, in every rank: create the process group (group=True; tasks with group="harness"
        reuse it) and import the rank parts `parts` (course code; a part module may warm up when imported),
        so that the first task's time is its own. A TaskResult if that failed."""
        started = time.monotonic()
        message = {"do": "prepare", "time_limit": time_limit, "parts": list(parts), "group": group}
        result = self._exchange("prepare", [message] * self.world_size, started + time_limit, started)
        return None if result.complete else result

    # -------------------------------------------------------------- tasks
    def run(self, part: str, inputs: list[Any], *, group: str = "harness", time_limit: float,
            measure_memory: bool = False) -> TaskResult:
        """Send each rank its own inputs for rank part `part`; collect every rank's reply (or time out)."""
        if len(inputs) != self.world_size:
            raise ValueError(f"{part}: {len(inputs)} inputs for {self.world_size} ranks")
        messages = [{"do": "task", "part": part, "group": group, "time_limit": time_limit, "inputs": x}
                    for x in inputs]
        started = time.monotonic()
        return self._exchange(part, messages, started + time_limit, started, measure_memory, count_sent=True)

    def _exchange(self, part: str, messages: list[dict], deadline: float, started: float,
                  measure_memory: bool = False, *, count_sent: bool = False) -> TaskResult:
        # The harness owns the measurement window: it opens (clock and memory) before the first byte is sent, and
        # inputs go out without blocking, each rank's as fast as it reads, all under one deadline. A rank that
        # stops reading its socket can neither freeze the harness nor start the clock late.
        if part != "import":   # the import counts from the launch
            started = time.monotonic()
        window = MemoryWindow({r: h.pid for r, h in self.ranks.items()}, self.world_size,
                              device=self.profile.backend == "nccl") if measure_memory else None
        sent_before = self.sent_bytes() if count_sent else None   # a task's own traffic (not import, prepare)
        for rank, message in sorted(zip(range(self.world_size), messages)):
            handle = self.ranks.get(rank)
            if handle is not None and not handle.closed:
                handle.send(message)
        self._pump(deadline, lambda: all(h.inbox or h.closed for h in self.ranks.values()),
                   tick=window.poll if window else None)
        result = self._result(part, started, deadline, window.peak_rss if window else [0] * self.world_size)
        if sent_before is not None:
            sent_after = self.sent_bytes()
            result.sent_bytes = None if sent_after is None else sent_after - sent_before
        result.unread = [r for r, h in sorted(self.ranks.items()) if h.outbox and not h.closed]
        for handle in self.ranks.values():
            handle.drop_pending()
        if window:
            window.close()
            result.start_rss, result.start_private, result.peak_private = (window.start_rss, window.start_private,
                                                                           window.peak_private)
            result.peak_resident = window.peak_resident
            result.start_device, result.peak_device = window.start_device, window.peak_device
        return result

    def loopback_bytes(self) -> int | None:
        """Bytes sent so far over the job's own loopback (meter.loopback_bytes); None where it cannot be read."""
        return loopback_bytes(next((h.pid for h in self.ranks.values()), None))

    def sent_bytes(self) -> int | None:
        """The loopback counter where it is evidence of this job's traffic: None on NCCL (GPU traffic does not cross
        the loopback) and without the sandbox (the host's loopback carries every process's traffic)."""
        if not self.sandboxed or self.profile.backend == "nccl":
            return None
        return self.loopback_bytes()

    def _result(self, part: str, started: float, deadline: float, peaks: list[int] | None = None) -> TaskResult:
        outcomes: list[RankOutcome | None] = []
        for rank in range(self.world_size):
            handle = self.ranks.get(rank)
            reply = handle.inbox.pop(0) if handle and handle.inbox else None
            if not isinstance(reply, dict) or "ok" not in reply:
                outcomes.append(None)
                continue
            outcomes.append(RankOutcome(rank=rank, ok=bool(reply["ok"]), result=reply.get("outputs"),
                                        error=rank_error(reply.get("error")), phase=str(reply.get("phase", "")),
                                        calls=reply.get("calls") if isinstance(reply.get("calls"), dict) else {},
                                        replied=reply.get("_at", 0.0)))
        waiting = [r for r in range(self.world_size) if outcomes[r] is None]
        alive = self.proc is not None and self.proc.poll() is None
        timed_out = bool(waiting) and alive and time.monotonic() >= deadline and not self.problem
        ends = [o.replied for o in outcomes if o is not None]
        seconds = (max(ends) if ends and not waiting else time.monotonic()) - started
        if timed_out:
            self.folder.dump_stacks({r: self.ranks[r].pid for r in waiting if r in self.ranks},
                                    lambda pid: launch.carries(pid, launch.TOKEN_ENV, self.token))
        return TaskResult(part=part, outcomes=outcomes, started=started, seconds=seconds, timed_out=timed_out,
                          problem=self.problem, peak_rss=peaks or [])

    # -------------------------------------------------------------- the event loop
    def _pump(self, deadline: float, done: Callable[[], bool], tick: Callable[[], None] | None = None) -> None:
        while not done() and not self.problem:
            now = time.monotonic()
            if now >= deadline:
                return
            if self.proc is not None and self.proc.poll() is not None:
                self._drain()   # replies sent just before the exit are still in the sockets
                return
            if tick:
                tick()
            wait = min(deadline - now, MEMORY_POLL if tick else 0.1)
            for key, events in self.selector.select(timeout=wait):
                if key.data is None:
                    self._accept()
                    continue
                if events & selectors.EVENT_WRITE:
                    key.data.write()
                if events & selectors.EVENT_READ and not key.data.closed:
                    key.data.read()

    def _drain(self) -> None:
        for key, _ in self.selector.select(timeout=0.05):
            if key.data is None:
                self._accept()
            else:
                key.data.read()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        conn.settimeout(5.0)
        try:
            hello = wire.receive(conn)
            rank = int(hello["hello"])
        except Exception:   # noqa: not a rank driver's hello
            conn.close()
            return
        if not 0 <= rank < self.world_size or rank in self.ranks:
            self.problem = (f"a second process (pid {pid}) connected to the harness as rank {rank}: only the rank "
                            f"driver may do that, once per rank (tampering)")
            conn.close()
            return
        wire.send(conn, {"distributed": not self.local, "module": self.module, "scratch": str(self.folder.scratch),
                         "output_limit": OUTPUT_LIMIT,
                         "memory_limit": int(self.profile.memory_limit_gb * 2**30) if self.profile.memory_limit_gb
                         else None})
        self.ranks[rank] = RankChannel(conn, pid, self.selector)

    # -------------------------------------------------------------- the end
    def stacks(self) -> dict[int, str]:
        return {r: self.folder.tail(self.folder.stack(r), 20000) for r in range(self.world_size)
                if self.folder.size(self.folder.stack(r))}

    def logs(self) -> dict[int, str]:
        return {r: self.folder.tail(self.folder.log(r)) for r in range(self.world_size)}

    def flooded(self) -> list[int]:
        return [r for r in range(self.world_size) if self.folder.size(self.folder.log(r)) >= OUTPUT_LIMIT]

    def agent_log(self) -> str:
        return self.folder.tail(self.folder.agent_log, 64 * 1024)

    def close(self) -> None:
        """Stop everything the job started (whatever state it is in) and remove its folder."""
        for handle in self.ranks.values():
            try:
                handle.conn.close()
            except OSError:
                pass
        if self.proc is not None:
            launch.stop_tree(self.proc, token=self.token)
            cgroups.kill_and_remove(self.cgroups)
        self.selector.close()
        self.listener.close()
        self.folder.remove()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
