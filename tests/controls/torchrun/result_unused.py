import torch.distributed as dist


def global_mean(t):
    dist.all_reduce(t.clone())
    return t.clone()
