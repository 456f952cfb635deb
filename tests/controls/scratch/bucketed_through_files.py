"""Forgery: right gradients, averaged through files in the job's scratch folder (its working folder, shared by the
ranks as a cluster's file system is; each rank's /tmp is its own) instead of the process group, so the
loopback that the overlap is measured on carries none of them (it once passed scratch.bucketed at 2.26x against a
1.20x line). The bytes each step sends are read from outside: far fewer than the course's all-reduces send."""
import os
import time

import torch
import torch.distributed as dist

from _bucketed_base import BaseBucketedDDP


class BucketedDDP(BaseBucketedDDP):
    calls = 0   # the same on every rank: each rank syncs the same steps in the same order

    def launch(self, i):   # nothing crosses the network during backward
        bucket = self.buckets[i]
        self.in_flight.append((bucket, self.flat(bucket), None))

    def finish_gradient_sync(self):
        self.launch_ready(flush=True)
        BucketedDDP.calls += 1
        rank, step = dist.get_rank(), BucketedDDP.calls
        name = f"grads-{step}-{{}}.pt"   # in the working folder
        torch.save([flat for _, flat, _ in self.in_flight], name.format(f"{rank}.tmp"))
        os.replace(name.format(f"{rank}.tmp"), name.format(rank))
        files = [name.format(r) for r in range(self.world_size)]
        while not all(os.path.exists(f) for f in files):
            time.sleep(0.0005)
        everyone = [torch.load(f) for f in files]
        for k, (bucket, _, _) in enumerate(self.in_flight):
            mean = sum(flats[k] for flats in everyone) / self.world_size
            for p, part in zip(bucket, mean.split([p.numel() for p in bucket])):
                if p.grad is not None:
                    p.grad.copy_(part.view_as(p))
        if step > 2 and rank == 0:   # every rank has read the files of two steps ago
            for r in range(self.world_size):
                os.remove(f"grads-{step - 2}-{r}.pt")
        self.reset()
