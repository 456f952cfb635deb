"""Reference computations for the 05_pipeline checks (trusted side only; not in the student pack).

Each replays, in this one process, what a correct pipeline computes on the same model and data:
a pipeline runs the same layers on the same microbatches and only sends tensors in between, so
the plain model run microbatch by microbatch is its reference. BatchNorm normalises each
microbatch by its own statistics, which the replays reproduce by running the chunks separately.
"""
from __future__ import annotations


def _model(spec: dict, state: dict):
    from ...rank.toolkit import build_model

    return build_model({**spec, "state": state})


def _chunks(tensor, m: int):
    return tensor.tensor_split(m)


def pipeline_outputs(spec: dict, state: dict, images, m: int):
    """What one forward GPipe step returns on the last stage: the model in training mode, microbatch by microbatch."""
    import torch

    model = _model(spec, state).train()
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in _chunks(images, m)])


def schedule_step(spec: dict, state: dict, images, labels, m: int) -> dict:
    """One GPipe step with the mean-loss cross-entropy: each microbatch's loss, and the gradients.

    The schedule scales the summed microbatch gradients by 1/m (scale_grads, the default): with
    equal microbatches that is the whole batch's mean-loss gradient.
    """
    import torch.nn.functional as F

    model = _model(spec, state).train()
    losses = []
    for x, y in zip(_chunks(images, m), _chunks(labels, m)):
        loss = F.cross_entropy(model(x), y)
        (loss / m).backward()
        losses.append(loss.item())
    return {"losses": losses, "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def train_steps(spec: dict, state: dict, batches: list, m: int, *, lr: float, momentum: float,
                zero_grad: bool = True) -> dict:
    """SGD over `batches`, one step per batch, each batch as m microbatches: weights after each batch, losses.

    zero_grad=False replays a pipeline whose gradients are never cleared exactly: the schedule
    adds the new microbatch gradients to what .grad holds, then divides all of .grad by m.
    """
    import torch
    import torch.nn.functional as F

    model = _model(spec, state).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    states, losses, chunk_losses = [], [], []
    for x, y in batches:
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        chunk_losses.append([])
        for xc, yc in zip(_chunks(x, m), _chunks(y, m)):
            loss = F.cross_entropy(model(xc), yc)
            loss.backward()
            chunk_losses[-1].append(loss.item())
        for q in model.parameters():
            q.grad.div_(m)          # the schedule divides all of .grad, old gradients included
        optimizer.step()
        losses.append(sum(chunk_losses[-1]) / m)
        states.append({n: q.detach().clone() for n, q in model.named_parameters()})
    return {"states": states, "losses": losses, "chunk_losses": chunk_losses}
