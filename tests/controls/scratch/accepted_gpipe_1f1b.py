"""Accepted variant: the stages run 1F1B (PipeDream-Flush) instead of GPipe's all-forwards-then-all-backwards: after
a warm-up of (stages - 1 - rank) forwards each stage alternates one forward and one backward. The same gradients
(the mean over microbatches) and the same fill and drain time, with fewer activations alive: it must pass."""
import torch
import torch.distributed as dist

from _gpipe_base import recv_tensor, send_tensor


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    rank, world_size = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world_size - 1
    device = next(stage.parameters()).device
    m = n_microbatches
    x_chunks = inputs.chunk(m) if first else None
    y_chunks = labels.chunk(m) if last else None
    received, outputs, losses, sends = {}, {}, {}, []

    def forward(i):
        x = x_chunks[i] if first else recv_tensor(rank - 1, device).requires_grad_()
        y = stage(x)
        received[i] = x
        if last:
            losses[i] = loss_fn(y, y_chunks[i])
        else:
            sends.extend(send_tensor(y, rank + 1))
            outputs[i] = y

    def backward(i):
        if last:
            (losses.pop(i) / m).backward()
        else:
            grad = torch.empty_like(outputs[i])
            dist.irecv(grad, rank + 1).wait()
            outputs.pop(i).backward(grad)
        if not first:
            sends.append(dist.isend(received[i].grad, rank - 1))

    warm_up = min(world_size - 1 - rank, m)
    for i in range(warm_up):
        forward(i)
    done = []
    for i in range(m - warm_up):          # steady state: one forward, one backward
        forward(warm_up + i)
        if last:
            done.append(losses[i].detach())
        backward(i)
    for i in range(m - warm_up, m):       # cool-down: the backwards still owed
        backward(i)
    for handle in sends:
        handle.wait()
    return torch.stack(done).mean().item() if last else None
