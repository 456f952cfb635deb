"""torchrun_basics.py as released to students: every body is nbgrader's stub."""
import os

import torch
import torch.distributed as dist


def dist_env():
    """Return (rank, local_rank, world_size)."""
    # YOUR CODE HERE
    raise NotImplementedError()


def global_mean(t):
    # YOUR CODE HERE
    raise NotImplementedError()


def gather_all(t):
    # YOUR CODE HERE
    raise NotImplementedError()
