"""Mistake (no fill and drain): each stage runs all of its forwards and only then sends the activations on
(and likewise the gradients back): the stages take turns, as with one microbatch."""
import torch
import torch.distributed as dist

from _gpipe_base import recv_tensor, send_tensor


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world_size - 1
    device = next(stage.parameters()).device
    xs = list(inputs.chunk(n_microbatches)) if first else [recv_tensor(rank - 1, device).requires_grad_()
                                                          for _ in range(n_microbatches)]
    ys = [stage(x) for x in xs]
    if last:
        losses = [loss_fn(y, t) for y, t in zip(ys, labels.chunk(n_microbatches))]
        for loss in losses:
            (loss / n_microbatches).backward()
    else:
        for y in ys:
            for handle in send_tensor(y, rank + 1):
                handle.wait()
        grads = []
        for y in ys:
            grad = torch.empty_like(y)
            dist.irecv(grad, rank + 1).wait()
            grads.append(grad)
        for y, grad in zip(ys, grads):
            y.backward(grad)
    if not first:
        for x in xs:
            dist.isend(x.grad, rank - 1).wait()
    return torch.stack([loss.detach() for loss in losses]).mean().item() if last else None
