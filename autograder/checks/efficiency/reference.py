"""The trusted references of 09_efficiency (not in the student pack): what a correct implementation computes."""
from __future__ import annotations


def accumulated_step(spec: dict, state: dict, batches: list[list], *, lr: float) -> tuple[dict, list[float]]:
    """(parameters after, each rank's mean loss) of one plain SGD step on the concatenation of every rank's
    micro-batches [rank][i] = (inputs, labels), mean cross-entropy: what DDP with accumulation must produce.

    With micro-batches of equal size the mean over the whole batch is the mean of the micro-batch means, so
    the loss each rank returns is the mean of its own k micro-batch losses (evaluated before the step)."""
    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model
    from .. import one_thread

    with one_thread():
        model = build_model({**spec, "state": state})
        with torch.no_grad():
            losses = [sum(float(F.cross_entropy(model(x), y)) for x, y in rank) / len(rank) for rank in batches]
        inputs = torch.cat([x for rank in batches for x, _ in rank])
        labels = torch.cat([y for rank in batches for _, y in rank])
        F.cross_entropy(model(inputs), labels).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, losses


def autocast_step(spec: dict, state: dict, x, y, *, lr: float, dtype: str | None, scale: float | None,
                  growth: int = 2000) -> dict:
    """The course's own mixed-precision step (dtype None: plain fp32): {"loss", "weights", "scale"}.

    autocast on the forward and the loss; fp16 scaled through a GradScaler (step skipped on overflow, scale
    halved); bf16 and fp32 step directly."""
    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model
    from .. import one_thread

    with one_thread():
        model = build_model({**spec, "state": state})
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=growth) if scale is not None else None
        with torch.autocast("cpu", dtype=getattr(torch, dtype or "bfloat16"), enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return {"loss": loss.item(), "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "scale": float(scaler.get_scale()) if scaler is not None else None}


def sharded_mixed_steps(spec: dict, state: dict, batches: list[list], *, lr: float, param_dtype: str | None,
                        reduce_dtype: str = "float32") -> dict:
    """Parameters after plain SGD steps as FSDP2 computes them with MixedPrecisionPolicy(param_dtype, reduce_dtype)
    on len(batches) ranks, rank r training on batches[r][step] = (images, labels); param_dtype None: no policy.

    One process does what every rank does: forward and backward on a copy of the weights cast to param_dtype (the
    all-gathered parameters; FSDP casts the model's inputs too), the gradients cast to reduce_dtype and averaged
    over ranks (the reduce-scatter), then the step on the fp32 weights. Measured against FSDP2 on 2 and 3 gloo
    ranks: the same numbers to the last bit."""
    import copy

    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model
    from .. import one_thread

    compute = getattr(torch, param_dtype) if param_dtype else torch.float32
    reduce = getattr(torch, reduce_dtype) if param_dtype else torch.float32
    with one_thread():
        model = build_model({**spec, "state": state})
        for step in range(len(batches[0])):
            total = None
            for rank in batches:
                images, labels = rank[step]
                replica = copy.deepcopy(model).to(compute)
                F.cross_entropy(replica(images.to(compute)), labels).backward()
                grads = [p.grad.to(reduce) for p in replica.parameters()]
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
            with torch.no_grad():
                for p, g in zip(model.parameters(), total):
                    p.add_((g / len(batches)).float(), alpha=-lr)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def adam_steps(spec: dict, state: dict, batches: list, *, lr: float, reset_at: int | None = None) -> dict:
    """{"weights", "losses"}: Adam on each whole global batch (images, labels) in turn, in one process; with
    `reset_at`, a fresh Adam from that step on (a resume that lost the optimizer's state)."""
    import torch
    import torch.nn.functional as F

    from ...rank.toolkit import build_model
    from .. import one_thread

    with one_thread():
        model = build_model({**spec, "state": state})
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for i, (images, labels) in enumerate(batches):
            if i == reset_at:
                optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {"weights": {n: p.detach().clone() for n, p in model.named_parameters()}, "losses": losses}
