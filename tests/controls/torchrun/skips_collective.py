import torch.distributed as dist


def global_mean(t):
    total = t.clone()
    if dist.get_rank() != 0:  # rank 0 "already knows" its value and skips the collective
        dist.all_reduce(total)
    return total / dist.get_world_size()
