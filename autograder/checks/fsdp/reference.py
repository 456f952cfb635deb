"""The reference trainings of 06_fsdp's checks (trusted side only; not in the student pack).

Each computes, in one process, what FSDP over N ranks must produce from the same secret inputs:
the gradient FSDP applies is the average over ranks of each rank's gradient on its own batch (a
reduce-scatter with ReduceOp.AVG), and every rank steps its shard of the same parameters.

SGD is written out here (torch.optim.SGD's update, dampening 0, no Nesterov): constructing a
torch.optim optimizer imports torch._dynamo, 5-10 s of the harness's time while the ranks start.
"""
from __future__ import annotations

from ...rank.toolkit import build_model, state_of
from . import one_thread


def _sgd_step(params: list, momenta: list, *, lr: float, momentum: float) -> None:
    """torch.optim.SGD's step: the momentum buffer starts as the first gradient, then buf = momentum buf + grad."""
    import torch

    with torch.no_grad():
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            if momentum:
                momenta[i] = p.grad.clone() if momenta[i] is None else momenta[i].mul_(momentum).add_(p.grad)
                p.add_(momenta[i], alpha=-lr)
            else:
                p.add_(p.grad, alpha=-lr)
            p.grad = None


def train_whole_batch(spec: dict, state: dict, batches: list[list], *, lr: float, momentum: float) -> dict:
    """SGD with momentum on one model over each step's global batch, the ranks' slices in rank order.

    Only for models without BatchNorm: with equal slices, the mean loss over the global batch is
    the mean over ranks of each slice's mean loss, so the gradient is FSDP's.
    """
    import torch
    import torch.nn.functional as F

    with one_thread():
        model = build_model({**spec, "state": state})
        params = list(model.parameters())
        momenta = [None] * len(params)
        for step in range(len(batches[0])):
            images = torch.cat([rank[step][0] for rank in batches])
            labels = torch.cat([rank[step][1] for rank in batches])
            F.cross_entropy(model(images), labels).backward()
            _sgd_step(params, momenta, lr=lr, momentum=momentum)
    return state_of(model)


def train_ranks_apart(spec: dict, state: dict, batches: list[list], *, lr: float) -> dict:
    """SGD where each rank's forward normalises its own batch with its own BatchNorm statistics (FSDP2 never
    synchronises buffers), gradients averaged over ranks; the state rank 0 holds afterwards (its buffers)."""
    import torch
    import torch.nn.functional as F

    world_size = len(batches)
    with one_thread():
        model = build_model({**spec, "state": state}).train()
        buffers = [{n: b.clone() for n, b in model.named_buffers()} for _ in range(world_size)]
        params = list(model.parameters())
        for step in range(len(batches[0])):
            for rank in range(world_size):
                with torch.no_grad():
                    for name, value in buffers[rank].items():
                        model.get_buffer(name).copy_(value)
                images, labels = batches[rank][step]
                (F.cross_entropy(model(images), labels) / world_size).backward()
                buffers[rank] = {n: b.clone() for n, b in model.named_buffers()}
            _sgd_step(params, [None] * len(params), lr=lr, momentum=0.0)
        with torch.no_grad():
            for name, value in buffers[0].items():
                model.get_buffer(name).copy_(value)
    return state_of(model)
