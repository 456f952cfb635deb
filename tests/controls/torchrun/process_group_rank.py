import torch.distributed as dist


def dist_env():
    return dist.get_rank(), dist.get_rank(), dist.get_world_size()
