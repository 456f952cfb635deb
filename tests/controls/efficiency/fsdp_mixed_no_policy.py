"""Mistake: every block and the root sharded, but without the mixed-precision policy: fp32 all-gathers and compute."""
from torch.distributed.fsdp import fully_shard


def shard_model_mixed(model, mesh):
    for block in model.blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
