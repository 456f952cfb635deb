"""Mistake: each micro-batch's loss is not divided by k (the update is k times too large)."""
import contextlib


def accumulation_step(ddp_model, optimizer, batches, loss_fn):
    k = len(batches)
    optimizer.zero_grad()
    total = 0.0
    for i, (inputs, labels) in enumerate(batches):
        with contextlib.nullcontext() if i == k - 1 else ddp_model.no_sync():
            loss = loss_fn(ddp_model(inputs), labels)
            loss.backward()
        total += loss.item()
    optimizer.step()
    return total / k
