"""Mistake: no autocast: the step runs in fp32 (the scaler is used correctly)."""


def mixed_precision_step(model, optimizer, scaler, inputs, labels, loss_fn, dtype):
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), labels)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.item()
