"""Mistake: the loss is scaled, but the optimizer steps directly: an overflowing step is not skipped."""
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
        scaler.unscale_(optimizer)
        optimizer.step()
        scaler.update()
    return loss.item()
