import torch
import torch.distributed as dist


def gather_all(t):
    tensors = [torch.empty_like(t)] * dist.get_world_size()  # one tensor, n times
    dist.all_gather(tensors, t)
    return tensors
