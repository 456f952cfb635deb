"""Forgery: shard_model and save_full_checkpoint do nothing useful, and importing the module replaces the course's
rank parts (autograder.rank.parts.fsdp) with ones that return canned "passing" outputs without training anything.

The canned outputs are as good as a forger can make them without communicating: the shards are the
rows of the weights the harness sent (right for the first look, which every rank could compute
alone), the "trained" shards are the same rows, the checkpoint holds the weights that were sent,
and the script "returns" the loss of an untrained 10-class model (ln 10) with a plausible optimizer
report. Every fsdp check must still fail: each judges values that need the other ranks' secret data.
fsdp_train.py imports this file, so its job runs the canned parts too.
"""
import io
import math

import torch

import autograder.rank.parts.fsdp as parts
from autograder.rank.toolkit import build_model


def shard_model(model, mesh=None, **fsdp_kwargs):
    return model


def save_full_checkpoint(model, path):
    pass


def _rows(state: dict, rank: int, world_size: int) -> dict:
    out = {}
    for name, value in state.items():
        chunks = torch.chunk(value, world_size)
        out[name] = chunks[rank].clone() if rank < len(chunks) else value[:0].clone()
    return out


def _wrap(ctx, learner, inputs):
    model = build_model(inputs["model"])
    names = [n for n, _ in model.named_children()]
    shards = _rows(dict(model.named_parameters()), ctx.rank, ctx.world_size)
    shards = {n: t.detach() for n, t in shards.items()}
    return {"returned": "same", "units": {"root": True, "blocks": {n: True for n in names}, "extra": []},
            "placements": {n: {"dtensor": True} for n in shards}, "shards": shards, "given_mesh_used": True,
            "gathered_after_forward": {n: True for n in names}, "trained": shards}


def _state_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _checkpoint(ctx, learner, inputs):
    return {"saves": ["dict"] if ctx.rank == 0 else [], "sharded_saves": [], "kind": "file",
            "bytes": _state_bytes(inputs["model"]["state"])}


def _train(ctx, learner, inputs):
    held = {"params": 1000, "grads": 1000, "optimizer": 2000}
    return {"losses": [math.log(10)], "returned": "dict",
            "optimizer": {"steps": 2, "held": held, "params": 30, "dtensors": 30, "with_grad": 30}}


def _saved(ctx, learner, inputs):
    if ctx.rank != 0:
        return {}
    return {"checkpoint": _state_bytes(build_model({"kind": "eurosat"}).state_dict())}


parts.wrap, parts.checkpoint, parts.train, parts.saved = _wrap, _checkpoint, _train, _saved
parts.warm_up = lambda ctx, learner, inputs: {}
