"""Mistake: nothing is checkpointed (the model comes back as it was): same gradients, no memory saved."""


def checkpoint_blocks(model):
    return model
