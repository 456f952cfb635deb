"""Mistake: tensor hooks (register_hook) launch the buckets, but read p.grad instead of the gradient the hook
receives: autograd calls such a hook before it writes .grad, so the buckets carry no gradient of this step."""
import torch.distributed as dist
from torch import nn

from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def __init__(self, module, bucket_cap_mb=25.0):
        nn.Module.__init__(self)
        self.module = module
        self.world_size = dist.get_world_size()
        self.broadcast_start()
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = self.make_buckets(params, bucket_cap_mb * 2**20)
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self.reset()
        for p in params:
            p.register_hook(lambda grad, p=p: self.grad_ready(p))   # MISTAKE: .grad is not written yet
