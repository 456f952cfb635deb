"""Rank parts of 07_from_scratch (scratch_parts.py): run the learner's allreduce_gradients, BucketedDDP,
ShardedOptimizer and gpipe_step on this rank's inputs, and return what they produced.

The models are built here from the specs the harness sent (the harness builds the same ones
with these builders to compute the expected values). What a part records about the learner's
calls (which all-reduces started when, when a stage computed) is an observation: it draws the
pictures and names a mistake, it never decides a verdict.
"""
from __future__ import annotations

import time
from contextlib import ExitStack

from ._scratch_models import build_net, build_stage   # the harness builds the same models with them


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


# ------------------------------------------------------------------ a spy on all_reduce (hints and pictures only)

class AllReduceSpy:
    """Records each dist.all_reduce call while active: size, async_op, when it started and completed.

    Completion of an asynchronous call is taken from its future's callback (gloo and NCCL run it
    when the collective finishes); a synchronous call completes when it returns.
    """

    def __init__(self, learner):
        self.learner, self.calls, self.marks, self._stack = learner, [], {}, ExitStack()

    def __enter__(self):
        import torch.distributed as dist

        from ..toolkit import patched

        original = dist.all_reduce

        def spy(tensor, *args, **kwargs):
            asynchronous = bool(kwargs.get("async_op", args[2] if len(args) > 2 else False))
            record = {"numel": int(tensor.numel()), "async": asynchronous, "start": time.perf_counter(), "end": None}
            self.calls.append(record)
            work = original(tensor, *args, **kwargs)
            if asynchronous and work is not None:
                try:
                    work.get_future().add_done_callback(lambda _f, r=record: r.__setitem__("end", time.perf_counter()))
                except Exception:   # noqa: a backend without futures: the wait time stands in
                    pass
            else:
                record["end"] = time.perf_counter()
            return work

        self._stack.enter_context(patched(dist, "all_reduce", spy, self.learner))
        return self

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, []).append(time.perf_counter())

    def __exit__(self, *exc):
        self._stack.close()

    def summary(self, since: float = 0.0) -> dict:
        """Calls and marks, in seconds since `since` (plain data)."""
        calls = [{**c, "start": c["start"] - since, "end": None if c["end"] is None else c["end"] - since}
                 for c in self.calls]
        return {"calls": calls, "marks": {k: [t - since for t in v] for k, v in self.marks.items()}}


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
    with AllReduceSpy(learner) as spy, float32():
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


# ------------------------------------------------------------------ the overlap measurement (scratch.bucketed)

def overlap_prepare(ctx, learner, inputs):
    """Build the measured model twice (plain for the naive and local steps, wrapped in BucketedDDP), keep them."""
    import torch

    from ..toolkit import build_model

    device = torch.device(ctx.device)
    plain = build_model(inputs["model"]).to(device)
    inner = build_model(inputs["model"]).to(device)
    wrapped = learner.BucketedDDP(inner, bucket_cap_mb=inputs["cap_mb"])
    ctx.kept.clear()   # the overlap measurement's models, kept between its tasks (one job, many rounds)
    ctx.kept.update(plain=plain, wrapped=wrapped, inner=inner, x=inputs["x"].to(device), y=inputs["y"].to(device),
                    optimizers={"plain": torch.optim.SGD(plain.parameters(), lr=0.01),
                                "inner": torch.optim.SGD(inner.parameters(), lr=0.01)})
    return {"buckets": len(getattr(wrapped, "buckets", []) or [])}


class _Deferred:
    """An asynchronous all-reduce whose launch waits for the first wait(): then every all-reduce queued so far
    starts, in order (the no-overlap twin of launching from the hooks)."""

    def __init__(self, queue: list, start):
        self.queue, self.start, self.work = queue, start, None
        queue.append(self)

    def wait(self, *args, **kwargs):
        while self.queue:                      # launch everything backward queued, in bucket order
            handle = self.queue.pop(0)
            handle.work = handle.start()
        return self.work.wait()

    def is_completed(self):
        return self.work is not None and self.work.is_completed()


def _deferring(learner):
    """While active, dist.all_reduce(..., async_op=True) returns a _Deferred: the same buckets in the same order,
    all launched at once when finish_gradient_sync() first waits, after backward (the harness's no-overlap
    baseline, measured with the reference's own BucketedDDP)."""
    import torch.distributed as dist

    from ..toolkit import patched

    original, queue = dist.all_reduce, []

    def deferred(tensor, *args, **kwargs):
        if not kwargs.get("async_op", args[2] if len(args) > 2 else False):
            return original(tensor, *args, **kwargs)
        kwargs = {**kwargs, "async_op": True}
        return _Deferred(queue, lambda: original(tensor, *args[:2], **kwargs))

    return patched(dist, "all_reduce", deferred, learner)


def overlap_steps(ctx, learner, inputs):
    """`steps` training steps of kind naive (allreduce_gradients), bucketed (BucketedDDP), deferred (BucketedDDP
    with its all-reduces launched only once backward is over: no overlap) or local (no sync).

    The harness times the task from outside; the in-rank times and the recorded step are pictures.
    """
    import torch
    import torch.nn.functional as F

    kind, kept = inputs["kind"], ctx.kept
    bucketed = kind in ("bucketed", "deferred")
    model = kept["inner"] if bucketed else kept["plain"]
    front = kept["wrapped"] if bucketed else model
    optimizer = kept["optimizers"]["inner" if bucketed else "plain"]
    seconds, record = [], None
    for step in range(int(inputs["steps"])):
        recording = inputs.get("record") and step == int(inputs["steps"]) - 1
        with ExitStack() as stack:
            spy = stack.enter_context(AllReduceSpy(learner)) if recording else None
            if kind == "deferred":   # entered last: the spy sees each all-reduce when it really runs
                stack.enter_context(_deferring(learner))
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(front(kept["x"]), kept["y"])
            if recording:
                spy.mark("backward")
            loss.backward()
            if recording:
                spy.mark("backward_end")
            if kind == "naive":
                learner.allreduce_gradients(model)
            elif bucketed:
                front.finish_gradient_sync()
            if recording:
                spy.mark("synced")
            optimizer.step()
            if ctx.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        if recording:
            record = spy.summary(start)
    return {"seconds": seconds, "record": record}


# ------------------------------------------------------------------ scratch.zero1

def _average_gradients(model) -> None:
    """The part's own gradient all-reduce: ShardedOptimizer receives identical gradients on every rank."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


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
        cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[sc["optimizer"]]
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in sc["kwargs"].items()}
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
