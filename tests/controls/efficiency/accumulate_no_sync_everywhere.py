"""Mistake: no_sync() on every micro-batch, the last too: the gradients are never all-reduced."""


def accumulation_step(ddp_model, optimizer, batches, loss_fn):
    k = len(batches)
    optimizer.zero_grad()
    mean_loss = 0.0
    for inputs, labels in batches:
        with ddp_model.no_sync():
            loss = loss_fn(ddp_model(inputs), labels) / k
            loss.backward()
        mean_loss += loss.item()
    optimizer.step()
    return mean_loss
