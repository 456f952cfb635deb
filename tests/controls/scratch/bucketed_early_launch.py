"""Mistake: a bucket's all-reduce starts as soon as its first gradient is ready, not its last."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def grad_ready(self, param):
        i = self.bucket_of[param]
        self.missing[i] = 0          # "ready" at the first gradient
        self.launch_ready()
