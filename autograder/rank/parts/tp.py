"""10_tensor_parallel (tp_parts.py): the learner's layers, block and plans, run on this rank's inputs.

Every part sends back what it saw, never a judgement: outputs, the input's gradient, and each parameter of the
learner's module as this rank holds it (its local value and gradient; a DTensor's local shard and placements).
"""
from __future__ import annotations

from ..toolkit import float32


def _local(t):
    """A tensor as this rank holds it: a DTensor's local shard, detached, on the CPU."""
    if t is None:
        return None
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.detach().to("cpu").clone()


def _params(module) -> dict:
    """{name: {"value", "grad", "placements"}} of every parameter, as this rank holds it."""
    out = {}
    for name, p in module.named_parameters():
        placements = getattr(p, "placements", None)
        out[name] = {"value": _local(p), "grad": _local(p.grad),
                     "placements": None if placements is None else [str(x) for x in placements]}
    return out


def _full(t):
    """A DTensor made whole (a collective: every rank calls it in the same order), a tensor as it is."""
    if t is not None and hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return None if t is None else t.detach().to("cpu").clone()


def _backward(out, upstream, x) -> dict:
    """(out * upstream).sum() backward, when the shapes allow it; the output, its shape and x's gradient."""
    import torch

    reply = {"shape": list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(upstream.shape):
        return {**reply, "out": _local(out) if isinstance(out, torch.Tensor) else None, "x_grad": None}
    (out * upstream.to(out.device)).sum().backward()
    return {**reply, "out": _local(out), "x_grad": _local(x.grad)}


def _linear(spec: dict, device):
    from torch import nn

    full = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    full.load_state_dict(spec["state"])
    return full.to(device)


def layers(ctx, learner, inputs):
    """ColumnParallelLinear(full) on the whole input x, then RowParallelLinear(full) on this rank's slice of x's
    features; each output times the upstream gradient the harness sent, summed, backward."""
    import torch

    device, out = torch.device(ctx.device), {}
    for kind, cls in (("column", learner.ColumnParallelLinear), ("row", learner.RowParallelLinear)):
        sc = inputs[kind]
        layer = cls(_linear(sc["linear"], device))
        x = sc["x"].to(device).requires_grad_()
        with float32():
            out[kind] = {**_backward(layer(x), sc["upstream"], x), "params": _params(layer)}
    return out


def _block(spec: dict, device):
    from eurosat.vit import Block

    block = Block(spec["width"], spec["heads"], spec["mlp_ratio"], bias=spec["bias"])
    block.load_state_dict(spec["state"])
    return block.to(device)


def block(ctx, learner, inputs):
    """shard_block(a ViT Block with the harness's weights) on the whole input; backward of the output times the
    upstream gradient. The bytes the ranks sent are read by the harness, from outside."""
    import torch

    device = torch.device(ctx.device)
    sharded = learner.shard_block(_block(inputs["block"], device))
    x = inputs["x"].to(device).requires_grad_()
    with float32():
        reply = _backward(sharded(x), inputs["upstream"], x)
    heads = getattr(getattr(sharded, "attn", None), "heads", None)
    return {**reply, "params": _params(sharded), "heads": heads if isinstance(heads, int) else None}


def _vit(spec: dict, device):
    from eurosat.vit import ViT

    model = ViT(image_size=spec["image_size"], patch_size=spec["patch_size"], width=spec["width"],
                heads=spec["heads"], depth=spec["depth"], mlp_ratio=spec["mlp_ratio"])
    model.load_state_dict(spec["state"])
    return model.to(device)


def dtensor(ctx, learner, inputs):
    """parallelize_vit(ViT, a 1-D mesh of every rank) on the harness's images; backward of the logits times the
    upstream gradient. Each parameter's gradient made whole (full_tensor), and its local shard and placements."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    device = torch.device(ctx.device)
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    model = learner.parallelize_vit(_vit(inputs["model"], device), mesh)
    with float32():
        logits = model(inputs["images"].to(device))
        upstream = inputs["upstream"].to(device)
        if tuple(logits.shape) != tuple(upstream.shape):
            return {"shape": list(logits.shape), "out": None, "params": _params(model), "grads": {}, "heads": []}
        (logits * upstream).sum().backward()
    grads = {name: _full(p.grad) for name, p in model.named_parameters()}
    heads = [getattr(getattr(b, "attn", None), "heads", None) for b in getattr(model, "blocks", [])]
    return {"shape": list(logits.shape), "out": _full(logits), "params": _params(model), "grads": grads,
            "heads": [h if isinstance(h, int) else None for h in heads]}


def two_d(ctx, learner, inputs):
    """parallelize_2d(ViT, a ("dp", "tp") mesh) trained with SGD on this rank's data-parallel share of each global
    batch (mean cross-entropy); the losses, every parameter made whole after training, and the bytes of the
    parameters this rank holds."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh

    device = torch.device(ctx.device)
    mesh = init_device_mesh(device.type, tuple(inputs["mesh"]), mesh_dim_names=("dp", "tp"))
    model = learner.parallelize_2d(_vit(inputs["model"], device), mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"])
    losses = []
    for images, labels in inputs["batches"]:
        with float32():
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    held = sum(_local(p).numel() * p.element_size() for p in model.parameters())
    final = {name: _full(p) for name, p in model.named_parameters()}
    return {"losses": losses, "final": final, "param_bytes": int(held)}
