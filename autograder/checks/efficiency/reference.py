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

