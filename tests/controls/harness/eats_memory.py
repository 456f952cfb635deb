import torch


def dist_env():
    hoard = []
    while True:  # allocate without bound (untouched pages); the rank's memory cap must stop it
        hoard.append(torch.empty(2**24))
