"""Mistake (deadlock): a middle stage finishes each microbatch before it takes the next one: it sends the
activation on, then waits for that microbatch's gradient to send it back, before it receives the next
activation. But the last stage runs every forward before any backward: it waits for the next activation
while the middle stage waits for a gradient. Every rank waits for another (run it with 3 ranks)."""
import torch
import torch.distributed as dist

from _gpipe_base import recv_tensor, send_tensor


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world_size - 1
    device = next(stage.parameters()).device
    if not first and not last:                        # the middle stage: one microbatch at a time, both ways
        sends = []
        for i in range(n_microbatches):
            x = recv_tensor(rank - 1, device).requires_grad_()
            y = stage(x)
            for handle in send_tensor(y, rank + 1):
                handle.wait()
            grad = torch.empty_like(y)
            dist.irecv(grad, rank + 1).wait()
            y.backward(grad)
            sends.append(dist.isend(x.grad, rank - 1))
        for handle in sends:
            handle.wait()
        return None
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
            (losses[i] / n_microbatches).backward()
        else:
            grad = torch.empty_like(outputs[i])
            dist.irecv(grad, rank + 1).wait()
            outputs[i].backward(grad)
        if not first:
            sends.append(dist.isend(received[i].grad, rank - 1))
    for handle in sends:
        handle.wait()
    return torch.stack([loss.detach() for loss in losses]).mean().item() if last else None
