"""The blank exercise as a learner receives it."""
import torch.distributed as dist  # noqa: F401
from torch.distributed.fsdp import fully_shard  # noqa: F401


def shard_model(model, mesh=None, **fsdp_kwargs):
    # YOUR CODE HERE
    raise NotImplementedError()


def save_full_checkpoint(model, path):
    # YOUR CODE HERE
    raise NotImplementedError()
