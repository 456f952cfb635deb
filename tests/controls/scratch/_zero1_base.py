"""The reference ShardedOptimizer, split into methods that the zero1 controls override (not a control)."""
import torch
import torch.distributed as dist


class BaseShardedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, optimizer_cls, **kwargs):
        super().__init__(params, defaults=kwargs)
        self.params = [p for group in self.param_groups for p in group["params"]]
        self.owner = self.partition(dist.get_world_size())
        mine = self.my_shard(dist.get_rank())
        self.inner = optimizer_cls(mine, **kwargs) if mine else None
        if self.inner is not None:
            self.state = self.inner.state

    def partition(self, world_size):
        load, owner = [0] * world_size, {}
        for p in sorted(self.params, key=lambda p: -p.numel()):
            r = min(range(world_size), key=lambda r: load[r])
            owner[p] = r
            load[r] += p.numel()
        return owner

    def my_shard(self, rank):
        return [p for p in self.params if self.owner[p] == rank]

    @torch.no_grad()
    def step(self, closure=None):
        if self.inner is not None:
            self.inner.step()
        for p in self.params:
            dist.broadcast(p, src=self.owner[p])

    def shard_of(self, param):
        return self.owner[param]
