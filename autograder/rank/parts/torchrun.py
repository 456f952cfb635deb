"""Rank parts of 02_torchrun (torchrun_basics.py): call dist_env, global_mean, gather_all and return what they gave."""
from __future__ import annotations

from ..toolkit import environment


def _described(values) -> dict:
    """dist_env()'s return value as data: the values, and the type of each."""
    if not isinstance(values, (tuple, list)):
        return {"kind": type(values).__name__, "values": None, "types": []}
    return {"kind": "sequence", "values": [v if isinstance(v, (int, str, float)) else repr(v) for v in values],
            "types": [type(v).__name__ for v in values]}


def env(ctx, learner, inputs):
    """dist_env() under torchrun's environment, then under the made-up one the harness sent."""
    real = _described(learner.dist_env())
    with environment(dict(inputs["environment"])):
        made_up = _described(learner.dist_env())
    return {"real": real, "made_up": made_up}


def mean(ctx, learner, inputs):
    t = inputs["tensor"]
    out = learner.global_mean(t)
    import torch

    return {"result": out if isinstance(out, torch.Tensor) else None, "type": type(out).__name__,
            "input_after": t}


def gather(ctx, learner, inputs):
    import torch

    out = learner.gather_all(inputs["tensor"].clone())
    if not isinstance(out, (list, tuple)) or not all(isinstance(x, torch.Tensor) for x in out):
        return {"kind": type(out).__name__, "tensors": None}
    return {"kind": "list", "tensors": list(out)}
