"""Mistake: the gradients are reduced in bf16 (reduce_dtype left to follow param_dtype): the numbers drift."""
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def shard_model_mixed(model, mesh):
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    for block in model.blocks():
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model
