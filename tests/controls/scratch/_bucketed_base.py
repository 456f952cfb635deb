"""The reference BucketedDDP, split into methods that the controls next to this file override (not a control)."""
import torch
import torch.distributed as dist
from torch import nn


class BaseBucketedDDP(nn.Module):
    def __init__(self, module, bucket_cap_mb=25.0):
        super().__init__()
        self.module = module
        self.world_size = dist.get_world_size()
        self.broadcast_start()
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = self.make_buckets(params, bucket_cap_mb * 2**20)
        self.bucket_of = {p: i for i, b in enumerate(self.buckets) for p in b}
        self.reset()
        for p in params:
            p.register_post_accumulate_grad_hook(self.grad_ready)

    def broadcast_start(self):
        with torch.no_grad():
            for tensor in [*self.module.parameters(), *self.module.buffers()]:
                dist.broadcast(tensor, src=0)

    def make_buckets(self, params, cap_bytes):
        buckets, bucket, size = [], [], 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if bucket and size + nbytes > cap_bytes:
                buckets.append(bucket)
                bucket, size = [], 0
            bucket.append(p)
            size += nbytes
        if bucket:
            buckets.append(bucket)
        return buckets

    def reset(self):
        self.missing = [len(b) for b in self.buckets]
        self.next = 0
        self.in_flight = []

    def flat(self, bucket):
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])

    def launch(self, i):
        bucket = self.buckets[i]
        flat = self.flat(bucket)
        self.in_flight.append((bucket, flat, dist.all_reduce(flat, async_op=True)))

    def launch_ready(self, flush=False):
        while self.next < len(self.buckets) and (flush or self.missing[self.next] == 0):
            self.launch(self.next)
            self.next += 1

    def grad_ready(self, param):
        self.missing[self.bucket_of[param]] -= 1
        self.launch_ready()

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def finish_gradient_sync(self):
        self.launch_ready(flush=True)
        for bucket, flat, handle in self.in_flight:
            handle.wait()
            flat.div_(self.world_size)
            for p, mean in zip(bucket, flat.split([p.numel() for p in bucket])):
                if p.grad is not None:
                    p.grad.copy_(mean.view_as(p))
        self.reset()
