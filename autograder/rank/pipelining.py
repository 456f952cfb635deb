"""Rank-side helpers of the 05_pipeline parts: stages the harness split, data a rank must not read,
failures that must not leave peers waiting, marker files for collectives a rank may skip.

Runs in the learner's processes, like everything under autograder/rank/: nothing here knows an
expected value or judges.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from .toolkit import build_model

RESCUE_WAIT = 10.0   # seconds a rank waits for its peers before joining a collective they are stuck in


def harness_stage(ctx, share: dict):
    """This rank's stage as the harness split it: the model without the other ranks' blocks, in a PipelineStage.

    EuroSATNet.forward runs its children in order, so deleting the other blocks leaves a
    module that runs exactly this stage, under the model's own parameter names.
    """
    import torch
    from torch.distributed.pipelining import PipelineStage

    part = build_model({**share["model"], "state": None})
    for name in [n for n, _ in part.named_children() if n not in share["keep"]]:
        delattr(part, name)
    part.load_state_dict(share["state"], strict=True)
    device = torch.device(ctx.device)
    return PipelineStage(part.to(device), ctx.rank, ctx.world_size, device)


def on_device(device, value):
    """value on the device, or None for an input this rank was not sent."""
    return None if value is None else value.to(device)


def materialised(value):
    """A tensor this rank was sent, or zeros where the harness sent only a shape (data this rank must not read)."""
    import torch

    if isinstance(value, dict) and "zeros" in value:
        return torch.zeros(value["zeros"], dtype=getattr(torch, value["dtype"]))
    return value


@contextmanager
def peers_released():
    """If the learner's code raises, close this rank's process group, then re-raise.

    A peer blocked in a send or receive to this rank then fails at once ("connection closed
    by peer") instead of waiting for the time limit; the harness reports the first rank's error.
    """
    try:
        yield
    except BaseException:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:   # noqa: the learner's error is the one to report
                pass
        raise


@contextmanager
def root_cause_in_message():
    """Re-raise the learner's exception with its root cause in the message (the tracer wraps the real error)."""
    try:
        yield
    except Exception as exc:
        root = exc
        for _ in range(20):   # follow "raise ... from ..." to the original error
            following = root.__cause__ or root.__context__
            if following is None:
                break
            root = following
        if root is not exc and len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]}\n(caused by {type(root).__name__}: {str(root)[:600]})",)
        raise


def number_of(value) -> dict:
    """What a function returned where a number is expected: its type, and its value when it is one."""
    import torch

    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, torch.Tensor) and value.numel() == 1:
        number = float(value.detach())
    return {"type": type(value).__name__, "value": number}


def mark(folder: Path, name: str, rank: int) -> None:
    (folder / f"{name}.rank{rank}").write_text("1")


def wait_marks(folder: Path, name: str, ranks, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((folder / f"{name}.rank{r}").exists() for r in ranks):
            return True
        time.sleep(0.05)
    return False
