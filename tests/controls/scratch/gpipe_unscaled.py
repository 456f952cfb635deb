"""Mistake: every microbatch's loss is backpropagated as is: the accumulated gradients are the sum over
microbatches, n_microbatches times the mean."""
import torch
import torch.distributed as dist

from _gpipe_base import recv_tensor, send_tensor


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world_size - 1
    device = next(stage.parameters()).device
    x_chunks = inputs.chunk(n_microbatches) if first else None
    y_chunks = labels.chunk(n_microbatches) if last else None
    received, outputs, losses, sends = [], [], [], []
    for i in range(n_microbatches):
        x = x_chunks[i] if first else recv_tensor(rank - 1, device).requires_grad_()
        y = stage(x)
        received.append(x)
        if last:
            losses.append(loss_fn(y, y_chunks[i]))
        else:
            sends += send_tensor(y, rank + 1)
            outputs.append(y)
    for i in range(n_microbatches):
        if last:
            losses[i].backward()                      # not scaled by 1 / n_microbatches
        else:
            grad = torch.empty_like(outputs[i])
            dist.irecv(grad, rank + 1).wait()
            outputs[i].backward(grad)
        if not first:
            sends.append(dist.isend(received[i].grad, rank - 1))
    for handle in sends:
        handle.wait()
    return torch.stack([loss.detach() for loss in losses]).mean().item() if last else None
