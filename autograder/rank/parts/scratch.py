"""Rank parts of 07_from_scratch (scratch_parts.py): run the learner's allreduce_gradients, BucketedDDP,
ShardedOptimizer, ShardedGradOptimizer and gpipe_step on this rank's inputs, and return what they produced.

The models are built here from the specs the harness sent (the harness builds the same ones
with these builders to compute the expected values). What a part records about the learner's
calls (which all-reduces started when, when a stage computed) is an observation: it draws the
pictures and names a mistake, it never decides a verdict. The overlap measurement's parts are in
_scratch_overlap.py.
"""
from __future__ import annotations

import time

from ._scratch_models import build_net, build_stage   # the harness builds the same models with them
from ._scratch_overlap import AllReduceSpy, overlap_prepare, overlap_steps  # noqa: F401  (parts found here)


def _warm_up() -> None:
    """Pay, once per process and before any timed task (the harness imports this module first), what torch
    imports on the first backward with an explicit gradient and the first optimizer step: seconds, cold,
    which would otherwise land inside the first step that scratch.gpipe times."""
    import torch

    x = torch.zeros(2, requires_grad=True)
    (x * 2).backward(torch.ones(2))
    torch.optim.SGD([x], lr=0.1).step()


_warm_up()


def _grads(model) -> dict:
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}


# ------------------------------------------------------------------ scratch.naive / scratch.bucketed

def _train(ctx, learner, scenario: dict, kind: str) -> dict:
    import torch
    import torch.nn.functional as F

    from ..toolkit import float32, state_of

    device = torch.device(ctx.device)
    model = build_net(scenario["model"]).to(device)
    wrapped, after_init = model, None
    if kind == "bucketed":
        wrapped = learner.BucketedDDP(model, bucket_cap_mb=scenario["cap_mb"])
        after_init = state_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=scenario["lr"])
    grads, losses = [], []
    with AllReduceSpy(learner, zeros=True) as spy, float32():
        start = time.perf_counter()
        for x, y in scenario["batches"]:
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(wrapped(x.to(device)), y.to(device))
            spy.mark("backward")
            loss.backward()
            spy.mark("backward_end")
            if kind == "naive":
                learner.allreduce_gradients(model)
            else:
                wrapped.finish_gradient_sync()
            spy.mark("synced")
            grads.append(_grads(model))
            losses.append(float(loss.detach()))
            optimizer.step()
    return {"after_init": after_init, "grads": grads, "state": state_of(model), "losses": losses,
            "spy": spy.summary(start)}


def naive(ctx, learner, inputs):
    """Each scenario: SGD on this rank's batches, allreduce_gradients(model) after every backward."""
    return {"scenarios": [_train(ctx, learner, s, "naive") for s in inputs["scenarios"]]}


def bucketed(ctx, learner, inputs):
    """Each scenario: BucketedDDP(model, cap) on this rank's initial weights, then SGD with finish_gradient_sync()."""
    return {"scenarios": [_train(ctx, learner, s, "bucketed") for s in inputs["scenarios"]]}


# ------------------------------------------------------------------ scratch.zero1

def _average_gradients(model) -> None:
    """The part's own gradient all-reduce: ShardedOptimizer receives identical gradients on every rank."""
    import torch.distributed as dist

    ranks = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(ranks)


def _plain(value):
    """An owner as plain data: an int when it is one (also a 0-d integer tensor), else its repr."""
    import numbers

    import torch

    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return repr(value)[:80]


def _optimizer(scenario: dict) -> tuple:
    """(optimizer_cls, kwargs) of a ZeRO scenario, as the learner's optimizer is given them (betas as a tuple)."""
    import torch

    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[scenario["optimizer"]]
    return cls, {k: tuple(v) if isinstance(v, list) else v for k, v in scenario["kwargs"].items()}


def zero1(ctx, learner, inputs):
    """Each scenario: ShardedOptimizer(model.parameters(), cls, **kwargs), `steps` steps on averaged gradients.

    Returns every parameter's owner as shard_of says, this rank's optimizer state (what .state holds,
    tensors only) and the final weights.
    """
    import torch
    import torch.nn.functional as F

    from ..toolkit import float32, state_of

    out, device = [], torch.device(ctx.device)
    for sc in inputs["scenarios"]:
        model = build_net(sc["model"]).to(device)
        cls, kwargs = _optimizer(sc)
        optimizer = learner.ShardedOptimizer(model.parameters(), cls, **kwargs)
        losses = []
        for x, y in sc["batches"]:
            optimizer.zero_grad()
            with float32():
                loss = F.mse_loss(model(x.to(device)), y.to(device))
                loss.backward()
            _average_gradients(model)
            optimizer.step()
            losses.append(float(loss.detach()))
        named = list(model.named_parameters())
        owners = {n: _plain(optimizer.shard_of(p)) for n, p in named}
        held = getattr(optimizer, "state", {}) or {}
        state = {}
        for n, p in named:
            entry = held.get(p) if hasattr(held, "get") else None
            if isinstance(entry, dict):
                state[n] = {str(k): v.detach().clone() for k, v in entry.items() if isinstance(v, torch.Tensor)}
        out.append({"owners": owners, "state": state, "final": state_of(model), "losses": losses})
    return {"scenarios": out}


# ------------------------------------------------------------------ scratch.zero2

def zero2(ctx, learner, inputs):
    """Each scenario: ShardedGradOptimizer(model.parameters(), cls, **kwargs), `steps` steps on this rank's own
    gradients (not averaged: averaging them is the optimizer's work).

    Returns shard_range() as plain data, the bytes of the optimizer state it holds (what .state holds, tensors
    only) and the final weights; the bytes it sent are read by the harness, from outside.
    """
    import torch
    import torch.nn.functional as F

    from ..toolkit import float32, state_of

    out, device = [], torch.device(ctx.device)
    for sc in inputs["scenarios"]:
        model = build_net(sc["model"]).to(device)
        cls, kwargs = _optimizer(sc)
        optimizer = learner.ShardedGradOptimizer(model.parameters(), cls, **kwargs)
        for x, y in sc["batches"]:
            optimizer.zero_grad()
            with float32():
                F.mse_loss(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
        given = optimizer.shard_range()
        held = getattr(optimizer, "state", {}) or {}
        entries = held.values() if hasattr(held, "values") else []
        state_bytes = sum(v.numel() * v.element_size() for entry in entries if isinstance(entry, dict)
                          for v in entry.values() if isinstance(v, torch.Tensor))
        shard = [_plain(v) for v in given] if isinstance(given, (tuple, list)) else _plain(given)
        out.append({"range": shard, "state_bytes": int(state_bytes), "final": state_of(model)})
    return {"scenarios": out}


# ------------------------------------------------------------------ scratch.gpipe

def gpipe(ctx, learner, inputs):
    """gpipe_step(stage, inputs | None, labels | None, m, cross_entropy) once; the loss, the stage's gradients,
    and when this rank's stage computed (its pace layer's records: a picture)."""
    import torch
    import torch.nn.functional as F

    from ..toolkit import float32

    device = torch.device(ctx.device)
    stage = build_stage(inputs["stage"]).to(device)
    paces = [m for m in stage.modules() if hasattr(m, "events")]
    x, y = (None if t is None else t.to(device) for t in (inputs.get("inputs"), inputs.get("labels")))
    started = time.perf_counter()
    with float32():
        loss = learner.gpipe_step(stage, x, y, int(inputs["n_microbatches"]), F.cross_entropy)
    finished = time.perf_counter()
    kind = type(loss).__name__
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = float(loss.detach())
    elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
        loss = float(loss)
    elif loss is not None:
        loss = repr(loss)[:80]
    events = [e for p in paces for e in p.events]
    return {"loss": loss, "loss_type": kind, "grads": _grads(stage), "events": events,
            "started": started, "finished": finished}
