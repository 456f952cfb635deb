"""Accepted variant: hooks on the parameters' tensors (register_hook), which receive the gradient itself before it
is accumulated into .grad: each gradient is copied into its bucket's flat buffer from the hook's argument, and a
full bucket is launched from there. Another mechanism for "the gradient is ready": it must pass."""
import torch
import torch.distributed as dist
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def __init__(self, module, bucket_cap_mb=25.0):
        torch.nn.Module.__init__(self)
        self.module = module
        self.world_size = dist.get_world_size()
        self.broadcast_start()
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = self.make_buckets(params, bucket_cap_mb * 2**20)
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self.offset = {}
        for bucket in self.buckets:
            start = 0
            for p in bucket:
                self.offset[p] = start
                start += p.numel()
        self.reset()
        for p in params:
            p.register_hook(lambda grad, p=p: self.grad_arrived(p, grad))

    def reset(self):
        super().reset()
        self.flats = [torch.zeros(sum(p.numel() for p in b), dtype=b[0].dtype, device=b[0].device)
                      for b in self.buckets]

    def grad_arrived(self, param, grad):
        i = self.bucket_of[param]
        self.flats[i][self.offset[param]:self.offset[param] + param.numel()].copy_(grad.reshape(-1))
        self.missing[i] -= 1
        self.launch_ready()
        return grad

    def launch(self, i):
        self.in_flight.append((self.buckets[i], self.flats[i], dist.all_reduce(self.flats[i], async_op=True)))
