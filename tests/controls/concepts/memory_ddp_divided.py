"""Mistake: shard="none" (DDP) divided by the world size, as if replicas were shards."""


def training_memory_bytes(n_params, optimizer="adam", precision="fp32", world_size=1, shard="none"):
    moments = {"adam": 8, "sgd": 4}[optimizer]
    per_param = ({"weights": 4, "gradients": 4, "optimizer": moments} if precision == "fp32"
                 else {"weights": 2, "gradients": 2, "optimizer": 4 + moments})
    sharded = {"none": ("optimizer", "gradients", "weights"), "zero1": ("optimizer",),
               "zero2": ("optimizer", "gradients"), "zero3": ("optimizer", "gradients", "weights")}[shard]
    return n_params * sum(b / world_size if k in sharded else b for k, b in per_param.items())
