"""Mistake: the all-reduce runs on a copy of each gradient, and the result is never used."""
import torch.distributed as dist


def allreduce_gradients(model):
    world_size = dist.get_world_size()
    for param in model.parameters():
        if param.grad is not None:
            total = param.grad.clone()
            dist.all_reduce(total)
            mean = total / world_size   # computed, but param.grad is left as it was
            del mean
