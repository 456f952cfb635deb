"""Reference torchrun_basics.py (the same code as the 02_torchrun source notebook's solution)."""
import os

import torch
import torch.distributed as dist


def dist_env():
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])


def global_mean(t):
    total = t.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def gather_all(t):
    tensors = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(tensors, t)
    return tensors
