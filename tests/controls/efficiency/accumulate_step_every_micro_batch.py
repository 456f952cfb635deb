"""Mistake: the optimizer steps after every micro-batch (k steps instead of one)."""
import contextlib


def accumulation_step(ddp_model, optimizer, batches, loss_fn):
    k = len(batches)
    mean_loss = 0.0
    for i, (inputs, labels) in enumerate(batches):
        optimizer.zero_grad()
        with contextlib.nullcontext() if i == k - 1 else ddp_model.no_sync():
            loss = loss_fn(ddp_model(inputs), labels) / k
            loss.backward()
        optimizer.step()
        mean_loss += loss.item()
    return mean_loss
