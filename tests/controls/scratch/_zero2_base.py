"""The reference ShardedGradOptimizer, split into methods that the zero2 controls override (not a control)."""
import torch
import torch.distributed as dist
from torch import nn


class BaseShardedGradOptimizer(torch.optim.Optimizer):
    def __init__(self, params, optimizer_cls, **kwargs):
        super().__init__(params, defaults=kwargs)
        self.params = [p for group in self.param_groups for p in group["params"]]
        self.world_size, rank = dist.get_world_size(), dist.get_rank()
        self.numel = sum(p.numel() for p in self.params)
        self.slice_len = -(-self.numel // self.world_size)
        self.start = rank * self.slice_len
        self.padding = self.world_size * self.slice_len - self.numel
        self.slice = self.flat([p.detach() for p in self.params])[self.start:self.start + self.slice_len].clone()
        self.inner = self.make_inner(optimizer_cls, kwargs)
        self.state = self.inner.state

    def flat(self, tensors):
        return nn.functional.pad(torch.cat([t.reshape(-1) for t in tensors]), (0, self.padding))

    def make_inner(self, optimizer_cls, kwargs):
        return optimizer_cls([self.slice], **kwargs)

    def reduce(self, grads):
        """This rank's slice of the mean gradient."""
        mine = torch.empty_like(self.slice)
        dist.reduce_scatter_tensor(mine, grads)
        return mine.div_(self.world_size)

    def gather(self):
        gathered = torch.empty(self.world_size * self.slice_len, dtype=self.slice.dtype)
        dist.all_gather_single(gathered, self.slice)
        return gathered

    @torch.no_grad()
    def step(self, closure=None):
        grads = self.flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        self.slice.grad = self.reduce(grads)
        self.inner.step()
        gathered, offset = self.gather(), 0
        for p in self.params:
            p.copy_(gathered[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def shard_range(self):
        return self.start, min(self.start + self.slice_len, self.numel)
