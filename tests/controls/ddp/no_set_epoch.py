"""Mistake: a DistributedSampler, but start_epoch never calls set_epoch: every epoch repeats one order."""
from torch.utils.data import DataLoader, DistributedSampler


def make_train_loader(dataset, batch_size):
    return DataLoader(dataset, batch_size=batch_size, sampler=DistributedSampler(dataset, shuffle=True))


def start_epoch(loader, epoch):
    pass
