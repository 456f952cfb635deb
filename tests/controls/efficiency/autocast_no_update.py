"""Mistake: scaler.update() is never called: the scale neither halves after an overflow nor grows."""
import torch


def mixed_precision_step(model, optimizer, scaler, inputs, labels, loss_fn, dtype):
    optimizer.zero_grad()
    with torch.autocast(device_type=inputs.device.type, dtype=dtype):
        loss = loss_fn(model(inputs), labels)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
    return loss.item()
