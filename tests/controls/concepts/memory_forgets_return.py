"""Mistake: computes the total but never returns it."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    moments = {"adam": 8, "sgd": 4}[optimizer]
    total = n_params * (4 + 4 + moments)  # noqa: F841 (the mistake)
