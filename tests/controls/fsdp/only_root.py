"""Mistake: one FSDP unit for the whole model (the blocks are not wrapped first)."""
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_model(model, mesh=None, **fsdp_kwargs):
    if mesh is None:
        mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model
