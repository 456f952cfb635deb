"""Accepted variant: DDP's own bucket rule, a bucket closed once it reaches or passes the cap (after the parameter
that pushed it over), not before it would exceed it. Another bucket plan, the same gradients: it must pass."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def make_buckets(self, params, cap_bytes):
        buckets, bucket, size = [], [], 0
        for p in reversed(params):
            bucket.append(p)
            size += p.numel() * p.element_size()
            if size >= cap_bytes:
                buckets.append(bucket)
                bucket, size = [], 0
        if bucket:
            buckets.append(bucket)
        return buckets
