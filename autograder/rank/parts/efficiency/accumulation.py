"""Rank parts of efficiency.accumulate and efficiency.autocast: the learner's step on the harness's model and data.

What goes back is what the step produced: the returned loss and the parameters afterwards. What
the part observes besides (how many times the optimizer stepped, how many gradient all-reduces DDP
launched, the scaler's calls) only names a failure; the evidence is the weights and, for
accumulate, the bytes the harness reads on the job's loopback from outside.
"""
from __future__ import annotations

from ...toolkit import build_model, float32


def _params(model) -> dict:
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters()}


def _loss(value):
    """The returned loss as a float, or its type's name (a tensor or None is not what was asked)."""
    return float(value) if isinstance(value, float) else type(value).__name__


class StepCounter:
    """Counts the optimizer's steps (a hint only: the learner's process could fake it)."""

    def __init__(self, optimizer):
        self.steps = 0
        self.handle = optimizer.register_step_post_hook(self._count)

    def _count(self, optimizer, args, kwargs):
        self.steps += 1


# ================================================================ efficiency.accumulate

def accumulate(ctx, learner, inputs):
    """accumulation_step() on DDP over the harness's model (weights identical on every rank, so DDP's initial
    broadcast is skipped: the task's loopback bytes are the step's), with this rank's k micro-batches."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(ctx.device)
    model = build_model(inputs["model"]).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  init_sync=False)
    syncs = []

    def counting_allreduce(state, bucket):   # a hint only: how many buckets DDP all-reduced
        syncs.append(bucket.buffer().numel())
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=inputs["lr"])
    counter = StepCounter(optimizer)
    batches = [(x.to(device), y.to(device)) for x, y in inputs["batches"]]
    with float32():
        loss = learner.accumulation_step(ddp, optimizer, batches, F.cross_entropy)
    return {"loss": _loss(loss), "weights": _params(model), "optimizer_steps": counter.steps,
            "synced_numel": sum(syncs)}


# ================================================================ efficiency.autocast

def autocast(ctx, learner, inputs):
    """mixed_precision_step() in one process, once per case: a model, an optimizer, a scaler (fp16) or None (bf16).

    Each case: {"model": spec, "dtype": "float16"|"bfloat16", "scale": initial scale or None, "x", "y", "lr"}.
    Sends back the loss, the parameters (values and dtypes) after the step, and the scaler's scale after it."""
    import torch
    import torch.nn.functional as F

    device = torch.device(ctx.device)
    out = []
    for case in inputs["cases"]:
        model = build_model(case["model"]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=case["lr"])
        counter = StepCounter(optimizer)
        scaler = (torch.amp.GradScaler(device.type, init_scale=case["scale"], growth_interval=case["growth"])
                  if case["scale"] is not None else None)
        dtype = getattr(torch, case["dtype"])
        with float32():
            loss = learner.mixed_precision_step(model, optimizer, scaler, case["x"].to(device),
                                                case["y"].to(device), F.cross_entropy, dtype)
        out.append({"loss": _loss(loss), "weights": {n: p.detach().to("cpu", torch.float32).clone()
                                                     for n, p in model.named_parameters()},
                    "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                    "scale": float(scaler.get_scale()) if scaler is not None else None,
                    "optimizer_steps": counter.steps})
    return {"cases": out}
