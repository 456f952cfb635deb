"""Mistake: buckets are filled in registration order (first layer first), whose gradients are ready last."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def make_buckets(self, params, cap_bytes):
        return super().make_buckets(list(reversed(params)), cap_bytes)   # the base walks its list backwards
