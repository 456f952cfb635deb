"""Mistake: rank=0 hard-coded in init_process_group (every process claims rank 0)."""
import os

import torch
import torch.distributed as dist


def setup_distributed():
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=int(os.environ["WORLD_SIZE"]))
    return device
