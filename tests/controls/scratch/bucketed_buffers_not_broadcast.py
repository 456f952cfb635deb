"""Mistake: only the parameters are broadcast at construction, not the buffers."""
import torch
import torch.distributed as dist

from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def broadcast_start(self):
        with torch.no_grad():
            for p in self.module.parameters():
                dist.broadcast(p, src=0)
