import torch


def global_mean(t):
    return t.clone()


def gather_all(t):
    return [t.clone()]
