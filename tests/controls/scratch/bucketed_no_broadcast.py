"""Mistake: BucketedDDP never broadcasts rank 0's parameters and buffers: every rank keeps its own start."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def broadcast_start(self):
        pass
