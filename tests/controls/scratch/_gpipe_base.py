"""The reference gpipe_step and its helpers, for the gpipe controls to change (not a control)."""
import torch
import torch.distributed as dist


def send_tensor(tensor, dst):
    """Start sending a float32 tensor of any shape to rank `dst`: its shape first, then the data.
    Returns the handles to wait for."""
    header = torch.zeros(8, dtype=torch.int64, device=tensor.device)   # [ndim, size 0, size 1, ...]
    header[0] = tensor.dim()
    header[1:1 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    return [dist.isend(header, dst), dist.isend(tensor.detach().contiguous(), dst)]


def recv_tensor(src, device):
    """Receive a tensor that send_tensor sent from rank `src` (blocks until it has arrived)."""
    header = torch.empty(8, dtype=torch.int64, device=device)
    dist.irecv(header, src).wait()
    shape = header[1:1 + int(header[0])].tolist()
    data = torch.empty(shape, dtype=torch.float32, device=device)
    dist.irecv(data, src).wait()
    return data


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    """One GPipe step over the ranks as consecutive stages; the mean microbatch loss on the last rank, else None."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    first, last = rank == 0, rank == world_size - 1
    device = next(stage.parameters()).device
    x_chunks = inputs.chunk(n_microbatches) if first else None
    y_chunks = labels.chunk(n_microbatches) if last else None
    received, outputs, losses, sends = [], [], [], []

    # Fill: all forwards, microbatch by microbatch. A stage sends each activation as soon as it is
    # computed (isend), so the next stage starts on microbatch i while this one computes i + 1.
    for i in range(n_microbatches):
        x = x_chunks[i] if first else recv_tensor(rank - 1, device).requires_grad_()
        y = stage(x)
        received.append(x)
        if last:
            losses.append(loss_fn(y, y_chunks[i]))
        else:
            sends += send_tensor(y, rank + 1)
            outputs.append(y)

    # Drain: all backwards, in the same microbatch order. Each microbatch's loss counts 1/m, so the
    # accumulated gradient is the mean over microbatches (as ScheduleGPipe scales it).
    for i in range(n_microbatches):
        if last:
            (losses[i] / n_microbatches).backward()
        else:
            grad = torch.empty_like(outputs[i])            # the shape of what this stage sent
            dist.irecv(grad, rank + 1).wait()
            outputs[i].backward(grad)
        if not first:
            sends.append(dist.isend(received[i].grad, rank - 1))

    for handle in sends:                                   # every message has left before we return
        handle.wait()
    return torch.stack([loss.detach() for loss in losses]).mean().item() if last else None
