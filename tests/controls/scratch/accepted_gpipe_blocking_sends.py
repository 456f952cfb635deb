"""Accepted variant: the reference GPipe step with blocking sends (dist.send) instead of isend. The receiving stage
is already waiting for each message in the same order, so nothing deadlocks and the stages still overlap: it must
pass."""
import torch
import torch.distributed as dist
import _gpipe_base


def _send_tensor(tensor, dst):
    header = torch.zeros(8, dtype=torch.int64, device=tensor.device)
    header[0] = tensor.dim()
    header[1:1 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    dist.send(header, dst)
    dist.send(tensor.detach().contiguous(), dst)
    return []


class _Sent:
    def wait(self):
        return True


def _isend(tensor, dst):
    dist.send(tensor, dst)
    return _Sent()


def gpipe_step(stage, inputs, labels, n_microbatches, loss_fn):
    _gpipe_base.send_tensor = _send_tensor                       # the fill's activations
    isend, dist.isend = dist.isend, _isend                       # the drain's gradients
    try:
        return _gpipe_base.gpipe_step(stage, inputs, labels, n_microbatches, loss_fn)
    finally:
        dist.isend = isend
