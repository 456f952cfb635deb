"""Mistake: the sampler's rank taken from LOCAL_RANK (right on one node, wrong on several)."""
import os

from torch.utils.data import DataLoader, DistributedSampler


def make_train_loader(dataset, batch_size):
    sampler = DistributedSampler(dataset, num_replicas=int(os.environ["WORLD_SIZE"]),
                                 rank=int(os.environ["LOCAL_RANK"]), shuffle=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def start_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
