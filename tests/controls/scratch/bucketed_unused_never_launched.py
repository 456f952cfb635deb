"""Mistake: finish_gradient_sync only waits for the buckets the hooks launched: a bucket with a parameter the
loss never uses is never launched (nor are the buckets after it)."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def finish_gradient_sync(self):
        for bucket, flat, handle in self.in_flight:
            handle.wait()
            flat.div_(self.world_size)
            for p, mean in zip(bucket, flat.split([p.numel() for p in bucket])):
                if p.grad is not None:
                    p.grad.copy_(mean.view_as(p))
        self.reset()
