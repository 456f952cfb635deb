"""Mistake: the sampler built with rank=0 on every process: all ranks get the same share."""
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


def make_train_loader(dataset, batch_size):
    sampler = DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=0, shuffle=True)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def start_epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
