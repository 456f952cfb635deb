"""Mistake: rank 0 saves model.state_dict() of the FSDP model: its own shards (DTensors), not the full model."""
import torch
import torch.distributed as dist


def save_full_checkpoint(model, path):
    if dist.get_rank() == 0:
        torch.save(model.state_dict(), path)
