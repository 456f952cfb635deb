"""Mistake: rank 0 saves the DDP wrapper's state dict (keys prefixed with 'module.')."""
import torch
import torch.distributed as dist


def save_checkpoint(model, path):
    if dist.get_rank() == 0:
        torch.save(model.state_dict(), path)
    dist.barrier()
