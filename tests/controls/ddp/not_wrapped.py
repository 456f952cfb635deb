"""Mistake: the model is moved to the device but never wrapped in DistributedDataParallel."""


def wrap_model(model, device):
    return model.to(device)
