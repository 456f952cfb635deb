"""Mistake: optimizer state forgotten (weights + gradients only)."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    per_param = {"weights": 4, "gradients": 4} if precision == "fp32" else {"weights": 2, "gradients": 2}
    sharded = {"none": (), "zero1": (), "zero2": ("gradients",), "zero3": ("gradients", "weights")}[shard]
    return n_params * sum(b / world_size if k in sharded else b for k, b in per_param.items())
