"""Rank part of efficiency.checkpointing: one forward and backward of the harness's model, wrapped by the learner's
checkpoint_blocks or left plain.

What goes back: the loss and every parameter's gradient in the order of model.parameters() (wrappers may rename
parameters, never reorder them). The memory of the step is read by the harness from outside (VmHWM over the task);
what the part observes (what checkpoint_blocks returned, which gradients are missing) only names a failure.
"""
from __future__ import annotations

from ...toolkit import build_model, float32


def checkpointing(ctx, learner, inputs):
    """inputs: {"model": spec with state, "x", "y", "wrap": bool}."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    device = torch.device(ctx.device)
    model = build_model(inputs["model"]).to(device)
    returned = "plain"
    if inputs["wrap"]:
        out = learner.checkpoint_blocks(model)
        returned = "same" if out is model else "module" if isinstance(out, nn.Module) else type(out).__name__
        model = out if isinstance(out, nn.Module) else model
    with float32():
        loss = F.cross_entropy(model(inputs["x"].to(device)), inputs["y"].to(device))
        loss.backward()
    grads = [p.grad.detach().to("cpu").clone() if p.grad is not None else None for p in model.parameters()]
    return {"loss": float(loss), "grads": grads, "returned": returned}
