"""Mistake: every process on a GPU host takes GPU 0 (cuda:0 instead of cuda:LOCAL_RANK)."""
import torch
import torch.distributed as dist


def setup_distributed():
    if torch.cuda.is_available():
        device, backend = torch.device("cuda:0"), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend=backend)
    return device
