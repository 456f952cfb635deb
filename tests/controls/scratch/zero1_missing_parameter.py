"""Mistake: an off-by-one partition leaves the last parameter out of every shard; shard_of still answers 0."""
from _zero1_base import BaseShardedOptimizer


class ShardedOptimizer(BaseShardedOptimizer):
    def partition(self, world_size):
        load, owner = [0] * world_size, {}
        for p in self.params[:-1]:
            r = min(range(world_size), key=lambda r: load[r])
            owner[p] = r
            load[r] += p.numel()
        return owner

    def my_shard(self, rank):
        return [p for p in self.params if self.owner.get(p) == rank]

    def step(self, closure=None):
        import torch.distributed as dist

        if self.inner is not None:
            self.inner.step()
        for p in self.params:
            dist.broadcast(p.data, src=self.owner.get(p, 0))

    def shard_of(self, param):
        return self.owner.get(param, 0)
