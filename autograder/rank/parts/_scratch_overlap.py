"""Rank parts of scratch.bucketed's overlap measurement (re-exported by scratch.py, where the harness looks them
up), and the spy on dist.all_reduce that both scratch.py's parts and these use: what it records is an
observation (the pictures, the hint of a failure), never evidence.
"""
from __future__ import annotations

import time
from contextlib import ExitStack


# ------------------------------------------------------------------ a spy on all_reduce (hints and pictures only)

class AllReduceSpy:
    """Records each dist.all_reduce call while active: size, async_op, when it started and completed.

    Completion of an asynchronous call is taken from its future's callback (gloo and NCCL run it
    when the collective finishes); a synchronous call completes when it returns.
    """

    def __init__(self, learner, *, zeros: bool = False):
        self.learner, self.calls, self.marks, self._stack = learner, [], {}, ExitStack()
        self.zeros = zeros   # also record whether each buffer was all zeros when launched (a hint; never timed)

    def __enter__(self):
        import torch.distributed as dist

        from ..toolkit import patched

        original = dist.all_reduce

        def spy(tensor, *args, **kwargs):
            asynchronous = bool(kwargs.get("async_op", args[2] if len(args) > 2 else False))
            record = {"numel": int(tensor.numel()), "async": asynchronous, "start": time.perf_counter(), "end": None}
            if self.zeros:
                record["zeros"] = not bool(tensor.detach().any())
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
