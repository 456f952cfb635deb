"""How the learner's code creates the process group, watched from inside the rank (ddp.init's rank side).

init_process_group's arguments are recorded and checked before they are passed on: arguments
that would hang or crash the job (a hard-coded rank, NCCL without GPUs) are refused, after
every rank has voted, so that either all ranks or none call the real init. setup_distributed()
also runs on a simulated GPU host, where CUDA calls and init_process_group only record what the
learner's code asked for. All of this only names a failure; the harness's secret sum decides.
"""
from __future__ import annotations

import inspect
import json
import time
from contextlib import ExitStack
from pathlib import Path

from .toolkit import environment, patched


def device_str(value) -> str:
    import torch

    return str(value) if isinstance(value, torch.device) else f"{type(value).__name__} {value!r}"


class Refused(BaseException):
    """init_process_group arguments that would hang or crash, not passed on. BaseException: the learner's
    `except Exception` must not swallow it."""


def init_args(real_init, args, kwargs) -> dict:
    bound = inspect.signature(real_init).bind_partial(*args, **kwargs).arguments
    rank, world = bound.get("rank", -1), bound.get("world_size", -1)
    return {"backend": None if bound.get("backend") is None else str(bound["backend"]),
            "init_method": bound.get("init_method"),
            "rank": None if rank in (None, -1) else rank,
            "world_size": None if world in (None, -1) else world,
            "store": bound.get("store") is not None,
            "device_id": None if bound.get("device_id") is None else str(bound.get("device_id"))}


def backend_ok(backend: str | None, device_type: str, expected: str) -> bool:
    if backend is None:
        return False
    backend = backend.lower()
    return backend == expected or f"{device_type}:{expected}" in backend.replace(" ", "")


def init_problem(args: dict, env: dict, device_type: str, expected_backend: str) -> str | None:
    """Why these init_process_group arguments are wrong for this process, or None. Shared with the judge."""
    if args["rank"] is not None and str(args["rank"]) != env["RANK"]:
        return f"rank={args['rank']!r} passed to init_process_group by the process whose RANK is {env['RANK']}"
    if args["world_size"] is not None and str(args["world_size"]) != env["WORLD_SIZE"]:
        return f"world_size={args['world_size']!r} passed to init_process_group, but WORLD_SIZE is {env['WORLD_SIZE']}"
    if args["init_method"] not in (None, "env://"):
        return f"init_method={args['init_method']!r} instead of torchrun's environment (env://)"
    if not backend_ok(args["backend"], device_type, expected_backend):
        return f"backend {args['backend']!r} on a {device_type.upper()} rank (expected {expected_backend!r})"
    return None


def simulate_gpu_host(learner, env: dict, gpus: int) -> dict:
    """setup_distributed() as if on a GPU host with the harness's environment; nothing is initialised."""
    import torch
    import torch.distributed as dist

    record: dict = {"init": None, "set_device": []}
    real_init = dist.init_process_group

    def fake_init(*args, **kwargs):
        record["init"] = init_args(real_init, args, kwargs)

    def fake_set_device(device):
        record["set_device"].append(str(device))

    fakes = [(torch.cuda, "is_available", lambda: True), (torch.cuda, "device_count", lambda: gpus),
             (torch.cuda, "set_device", fake_set_device),
             (torch.cuda, "current_device", lambda: int(env["LOCAL_RANK"])),
             (dist, "init_process_group", fake_init), (dist, "is_initialized", lambda: record["init"] is not None),
             (dist, "get_rank", lambda group=None: int(env["RANK"])),
             (dist, "get_world_size", lambda group=None: int(env["WORLD_SIZE"])),
             (dist, "get_backend", lambda group=None: (record["init"] or {}).get("backend"))]
    accel = getattr(torch, "accelerator", None)
    if accel is not None:
        fakes += [(accel, name, value) for name, value in
                  (("is_available", lambda: True), ("device_count", lambda: gpus),
                   ("current_accelerator", lambda *a, **k: torch.device("cuda")),
                   ("set_device_index", fake_set_device), ("set_device_idx", fake_set_device))
                  if hasattr(accel, name)]
    with ExitStack() as stack:
        stack.enter_context(environment(dict(env)))
        for owner, name, value in fakes:
            stack.enter_context(patched(owner, name, value, learner))
        try:
            device = learner.setup_distributed()
        except Exception as exc:  # reported by the judge, with the simulation explained
            return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    return {"device": device_str(device), "init": record["init"], "set_device": record["set_device"]}


def vote(folder: Path, ctx, problem: str | None) -> str | None:
    """Post this rank's verdict on its init_process_group arguments and wait for every rank's; return a peer's
    refusal, if any. Then either every rank calls the real init or none does: no rank waits forever."""
    (folder / f".vote{ctx.rank}").write_text(json.dumps(problem))
    (folder / f".vote{ctx.rank}").rename(folder / f"vote{ctx.rank}")
    deadline = time.monotonic() + ctx.time_limit
    while time.monotonic() < deadline:
        votes = {r: folder / f"vote{r}" for r in range(ctx.world_size)}
        if all(v.exists() for v in votes.values()):
            return next((f"rank {r}: {json.loads(v.read_text())}" for r, v in votes.items()
                         if r != ctx.rank and json.loads(v.read_text())), None)
        gone = [r for r in votes if not votes[r].exists() and (folder / f"done{r}").exists()]
        if gone:
            return f"rank {gone[0]} returned from setup_distributed() without calling init_process_group"
        time.sleep(0.005)
    return "not every rank called init_process_group"
