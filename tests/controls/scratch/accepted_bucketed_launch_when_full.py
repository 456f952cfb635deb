"""Accepted variant: each bucket launches the moment its last gradient arrives, before earlier buckets if they are
still waiting (out of bucket order). The order in which gradients become ready is the same on every rank (the same
model and graph), so every rank issues the same all-reduces in the same order: nothing deadlocks, it must pass."""
from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    def reset(self):
        super().reset()
        self.launched = set()

    def grad_ready(self, param):
        i = self.bucket_of[param]
        self.missing[i] -= 1
        if self.missing[i] == 0:
            self.launch(i)
            self.launched.add(i)

    def launch_ready(self, flush=False):
        for i in range(len(self.buckets)):   # at the end: the buckets a gradient never completed
            if flush and i not in self.launched:
                self.launch(i)
                self.launched.add(i)
