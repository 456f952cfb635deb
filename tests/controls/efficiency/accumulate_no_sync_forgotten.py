"""Mistake: no no_sync(): every micro-batch's backward all-reduces (k all-reduces; the weights are still right)."""


def accumulation_step(ddp_model, optimizer, batches, loss_fn):
    k = len(batches)
    optimizer.zero_grad()
    mean_loss = 0.0
    for inputs, labels in batches:
        loss = loss_fn(ddp_model(inputs), labels) / k
        loss.backward()
        mean_loss += loss.item()
    optimizer.step()
    return mean_loss
