"""Mistake: the whole gradient is all-reduced and each rank keeps its slice of the mean: the right weights, but
every rank received every gradient (ZeRO-1's communication; under gloo, whose reduce-scatter is a whole all-reduce,
the same bytes as the reduce-scatter: the trusted side's read of the file rejects it)."""
import torch.distributed as dist
from _zero2_base import BaseShardedGradOptimizer


class ShardedGradOptimizer(BaseShardedGradOptimizer):
    def reduce(self, grads):
        dist.all_reduce(grads)
        return grads[self.start:self.start + self.slice_len].div(self.world_size)
