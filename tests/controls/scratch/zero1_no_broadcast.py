"""Mistake: each rank steps its shard but never sends the updated parameters to the others."""
import torch

from _zero1_base import BaseShardedOptimizer


class ShardedOptimizer(BaseShardedOptimizer):
    @torch.no_grad()
    def step(self, closure=None):
        if self.inner is not None:
            self.inner.step()
