"""Forgery: every function is a bare `pass`, and importing the module replaces the course's rank parts
(autograder.rank.parts.ddp) with ones that return canned "passing" outputs without calling anything.

The rank side belongs to the learner (it is visible and patchable there), so this must not help:
every ddp check judges values that only a working implementation, given the harness's secret
inputs, can return. Importing `forge` from here installs the same fakes (forges_when_grading.py).
"""
import io
import json
import math


def setup_distributed():
    pass


def make_train_loader(dataset, batch_size):
    pass


def start_epoch(loader, epoch):
    pass


def wrap_model(model, device):
    pass


def reduce_metrics(correct, total, loss_sum):
    pass


def save_checkpoint(model, path):
    pass


def _state_bytes(**shape) -> bytes:
    import torch

    from eurosat.model import EuroSATNet

    buffer = io.BytesIO()
    torch.save(EuroSATNet(**shape).state_dict(), buffer)
    return buffer.getvalue()


def _init(ctx, learner, inputs):
    gpu = f"cuda:{inputs['simulated_env']['LOCAL_RANK']}"
    args = {"backend": "nccl", "init_method": None, "rank": None, "world_size": None, "store": False, "device_id": None}
    return {"simulated": {"device": gpu, "init": args, "set_device": [gpu]}, "init": {**args, "backend": "gloo"},
            "device": "cpu", "initialized": True, "backend": "gloo", "rank": ctx.rank, "world_size": ctx.world_size,
            "sum": inputs["value"] * ctx.world_size}   # the best guess without a group


def _data(ctx, learner, inputs):
    n, ws = len(inputs["tokens"]), ctx.world_size
    share = [(ctx.rank + ws * i) % n for i in range(math.ceil(n / ws))]
    return {"loader": "DataLoader", "is_loader": True, "loader_drop_last": False, "sampler": "DistributedSampler",
            "distributed": True, "shuffle": True, "drop_last": False,
            "epochs": [share[e:] + share[:e] for e in range(inputs["epochs"])], "batch_sizes": [inputs["batch_size"]]}


def _wrap(ctx, learner, inputs):
    return {"is_ddp": True, "param_devices": ["cpu"], "buckets": len(inputs["batches"]),
            "state": inputs["model"]["state"]}


def _metrics(ctx, learner, inputs):
    correct, total, loss_sum = inputs["counts"]
    return {"kind": "pair", "values": [correct / total, loss_sum / total]}


def _checkpoint(ctx, learner, inputs):
    spec = inputs["model"]
    return {"saves": [{"kind": "state_dict", "keys": 26}] if ctx.rank == 0 else [],
            "file": _state_bytes(width=spec["width"], blocks=spec["blocks"], norm=spec["norm"])}


def _train(ctx, learner, inputs):
    if ctx.rank >= inputs["world"]:
        return {"idle": True}
    n = len(inputs["train"][1])
    out = {"trained": True, "images": math.ceil(n / inputs["world"]), "ddp_forwards": 12, "changed": True,
           "final": "same on every rank"}
    if ctx.rank == 0:
        history = [{"epoch": 1, "train_accuracy": 0.5, "train_loss": 1.2, "val_accuracy": 0.5, "val_loss": 1.2}]
        out.update(checkpoint=_state_bytes(), metrics=json.dumps({"epochs": history}))
    return out


def forge():
    import autograder.rank.parts.ddp as parts

    parts.init, parts.data, parts.wrap = _init, _data, _wrap
    parts.metrics, parts.checkpoint, parts.train = _metrics, _checkpoint, _train


forge()
