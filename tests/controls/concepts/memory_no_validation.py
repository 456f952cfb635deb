"""Mistake: correct numbers, but invalid arguments (world_size=0, unknown names) are not rejected."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    moments = {"adam": 8, "sgd": 4}.get(optimizer, 8)
    per_param = ({"weights": 4, "gradients": 4, "optimizer": moments} if precision != "mixed"
                 else {"weights": 2, "gradients": 2, "optimizer": 4 + moments})
    sharded = {"zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
               "zero3": ("optimizer", "gradients", "weights")}.get(shard, ())
    return n_params * sum(b / max(world_size, 1) if k in sharded else b for k, b in per_param.items())
