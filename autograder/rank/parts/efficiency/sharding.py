"""Rank part of efficiency.fsdp_mixed: the learner's shard_model_mixed (or, in the course's own job, the harness's
fully_shard with a given policy) on the harness's model, then a few SGD steps on this rank's batches.

What goes back: this rank's local shards after the steps (their dtype as stored) and the losses. The bytes the steps
sent are read by the harness on the job's loopback from outside; what the part observes (which modules became FSDP
units, the policy each unit holds) only names a failure.
"""
from __future__ import annotations

from ...toolkit import build_model, float32


def _policy(module) -> dict | None:
    """The dtypes an FSDP unit gathers in and reduces in (reduce_dtype None follows param_dtype), or None for a
    module that is not a unit. Read through FSDP2's private state: a hint only."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        return None
    try:
        policy = module._get_fsdp_state()._mp_policy
    except AttributeError:
        return {}
    return {"param": str(policy.param_dtype), "reduce": str(policy.reduce_dtype or policy.param_dtype)}


def _units(model) -> dict:
    """Which modules became FSDP units and with which policy: the root, then each child in order."""
    return {"root": _policy(model), "blocks": [_policy(child) for child in model.children()]}


def _shard_with(model, mesh, policy: str) -> None:
    """The harness's own sharding: every block, then the root, with the fp32 or the bf16-compute policy."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {} if policy == "fp32" else {
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
    for unit in model.blocks():
        fully_shard(unit, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)


def fsdp_mixed(ctx, learner, inputs):
    """inputs: {"model": spec with state, "batches": this rank's [(images, labels)] per step, "lr",
    "policy": None (the learner's shard_model_mixed) | "fp32" | "bf16" (the harness's)}."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    device = torch.device(ctx.device)
    model = build_model(inputs["model"]).to(device)
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    returned = "harness"
    with float32():
        if inputs["policy"] is None:
            out = learner.shard_model_mixed(model, mesh)
            returned = "same" if out is model else "module" if isinstance(out, nn.Module) else type(out).__name__
        else:
            _shard_with(model, mesh, inputs["policy"])
        optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"])
        losses = []
        for images, labels in inputs["batches"]:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    local = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().to("cpu").clone()
             for n, p in model.named_parameters()}
    return {"returned": returned, "units": _units(model), "shards": local, "losses": losses}
