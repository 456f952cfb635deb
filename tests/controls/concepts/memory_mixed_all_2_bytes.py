"""Mistake: mixed precision counted as 2 bytes for everything (half of fp32)."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    moments = {"adam": 8, "sgd": 4}[optimizer]
    scale = 0.5 if precision == "mixed" else 1.0
    per_param = {"weights": 4 * scale, "gradients": 4 * scale, "optimizer": moments * scale}
    sharded = {"none": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
               "zero3": ("optimizer", "gradients", "weights")}[shard]
    return n_params * sum(b / world_size if k in sharded else b for k, b in per_param.items())
