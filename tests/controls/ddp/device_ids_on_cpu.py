"""Mistake: device_ids=[0] whatever the device (DDP refuses it for CPU modules)."""
from torch.nn.parallel import DistributedDataParallel as DDP


def wrap_model(model, device):
    return DDP(model.to(device), device_ids=[0])
