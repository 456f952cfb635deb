"""Mistake: the model's parameters are cast to the low precision instead of using autocast."""


def mixed_precision_step(model, optimizer, scaler, inputs, labels, loss_fn, dtype):
    model.to(dtype)
    optimizer.zero_grad()
    loss = loss_fn(model(inputs.to(dtype)), labels)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.item()
