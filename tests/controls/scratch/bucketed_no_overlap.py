"""Mistake: the hooks only count; every bucket is all-reduced after backward, in finish_gradient_sync
(correct values, no overlap)."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def grad_ready(self, param):
        self.missing[self.bucket_of[param]] -= 1
