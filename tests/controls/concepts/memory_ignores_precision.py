"""Mistake: precision ignored: mixed precision split like fp32 (same total, wrong parts)."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    per_param = {"weights": 4, "gradients": 4, "optimizer": {"adam": 8, "sgd": 4}[optimizer]}
    sharded = {"none": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
               "zero3": ("optimizer", "gradients", "weights")}[shard]
    return n_params * sum(b / world_size if k in sharded else b for k, b in per_param.items())
