"""Mistake: NCCL whatever the device (fails on a CPU-only machine)."""
import os

import torch
import torch.distributed as dist


def setup_distributed():
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dist.init_process_group(backend="nccl")
    return device
