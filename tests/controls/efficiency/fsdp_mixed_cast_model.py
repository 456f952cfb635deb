"""Mistake: the model is cast to bf16 and sharded without a policy: the sharded weights themselves lose precision."""
import torch
from torch.distributed.fsdp import fully_shard


def shard_model_mixed(model, mesh):
    model.to(torch.bfloat16)
    for block in model.blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
