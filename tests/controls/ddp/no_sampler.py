"""Mistake: a shuffling DataLoader without DistributedSampler: every rank iterates over the whole dataset."""
from torch.utils.data import DataLoader


def make_train_loader(dataset, batch_size):
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def start_epoch(loader, epoch):
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
