"""What the tensor-parallel exercises must reproduce, computed in one process with the whole model (trusted side)."""
from __future__ import annotations

from .. import one_thread


def backward_of(module, x, upstream) -> dict:
    """The module's output on x, x's gradient and every parameter's gradient for the loss (out * upstream).sum()."""
    x = x.clone().requires_grad_()
    with one_thread():
        out = module(x)
        (out * upstream).sum().backward()
    return {"out": out.detach(), "x_grad": x.grad.detach(),
            "grads": {n: p.grad.detach().clone() for n, p in module.named_parameters()}}


def linear(spec: dict):
    from torch import nn

    full = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    full.load_state_dict(spec["state"])
    return full


def block(spec: dict):
    from eurosat.vit import Block

    b = Block(spec["width"], spec["heads"], spec["mlp_ratio"], bias=spec["bias"])
    b.load_state_dict(spec["state"])
    return b


def vit(spec: dict):
    from eurosat.vit import ViT

    model = ViT(image_size=spec["image_size"], patch_size=spec["patch_size"], width=spec["width"],
                heads=spec["heads"], depth=spec["depth"], mlp_ratio=spec["mlp_ratio"])
    model.load_state_dict(spec["state"])
    return model


def train(spec: dict, batches: list, lr: float) -> dict:
    """SGD on the global batches in one process (mean cross-entropy over each whole batch): the weights after."""
    import torch
    import torch.nn.functional as F

    model = vit(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with one_thread():
        for images, labels in batches:
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters()}
