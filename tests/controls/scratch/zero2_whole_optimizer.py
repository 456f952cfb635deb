"""Mistake: every rank gathers the whole mean gradient (reduce-scatter, then an all-gather of the gradient slices)
and steps an optimizer over the whole flat model, then keeps its weights: the right weights, N times the
optimizer state."""
import torch
import torch.distributed as dist
from _zero2_base import BaseShardedGradOptimizer


class ShardedGradOptimizer(BaseShardedGradOptimizer):
    def make_inner(self, optimizer_cls, kwargs):
        self.whole = self.flat([p.detach() for p in self.params]).clone()
        return optimizer_cls([self.whole], **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        grads = self.flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        self.whole.grad = torch.empty_like(self.whole)
        dist.all_gather_single(self.whole.grad, self.reduce(grads))
        self.inner.step()
        offset = 0
        for p in self.params:
            p.copy_(self.whole[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
