"""Rank parts of 06_fsdp (fsdp_parts.py, fsdp_train.py): call the learner's functions on this rank's inputs.

What goes back is what the learner's code produced: this rank's local shards (DTensor.to_local())
right after sharding and after a few training steps, the bytes of the file save_full_checkpoint
wrote, the losses main() returned. The harness compares them with what it computed from the
secret inputs. What a part observes besides (which modules became FSDP units, the mesh the
parameters live on, which blocks kept their gathered parameters after forward, who called
torch.save, what the optimizer steps) only names a failure; it never makes a pass.
"""
from __future__ import annotations

import sys
import time
from contextlib import ExitStack

from ..toolkit import build_model, environment, float32, patched, script_store, secret_synthetic_tensors

TWICE = "can only be applied to a module once"   # fully_shard's own error for a module sharded twice
SAVE_DELAY = 0.5   # seconds each torch.save waits before writing: a rank that does not wait for the writer sees no file


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t):
    """This rank's part of a parameter: a DTensor's local shard, any other tensor as it is (a detached CPU copy)."""
    t = t.to_local() if _is_dtensor(t) else t
    return t.detach().to("cpu").clone()


def _placement(t) -> dict:
    """Where a parameter lives, as FSDP describes it (hints only)."""
    if not _is_dtensor(t):
        return {"dtensor": False, "shape": list(t.shape)}
    mesh = t.device_mesh
    return {"dtensor": True, "placements": [repr(p) for p in t.placements], "mesh_size": mesh.size(),
            "mesh_names": list(mesh.mesh_dim_names or ())}


def _returned(out, model) -> str:
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    if out is model:
        return "same"
    if isinstance(out, DistributedDataParallel):
        return "ddp"
    return "none" if out is None else "module" if isinstance(out, nn.Module) else type(out).__name__


def _named_in(message: str, model) -> str:
    """Which module fully_shard's "applied twice" error names (it prints the module)."""
    if repr(model) in message:
        return "the model (root)"
    return next((f"model.{name}" for name, child in model.named_children() if repr(child) in message), "one module")


# ================================================================ fsdp.wrap

def wrap(ctx, learner, inputs):
    """shard_model() on the harness's model; this rank's shards; the same with a given mesh; then SGD steps on this
    rank's slices of each batch and the shards after them."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    device = torch.device(ctx.device)
    kwargs = dict(inputs["kwargs"])
    model = build_model(inputs["model"])
    names = [name for name, _ in model.named_children()]
    with float32():   # so a GPU's results compare with the CPU reference
        try:
            out = learner.shard_model(model, **kwargs)
        except Exception as exc:  # noqa: only fully_shard's "applied twice" is turned into a result
            if TWICE not in str(exc):
                raise
            return {"applied_twice": _named_in(str(exc), model)}
        result = {"returned": _returned(out, model),
                  "units": {"root": isinstance(model, FSDPModule),
                            "blocks": {n: isinstance(getattr(model, n), FSDPModule) for n in names},
                            "extra": [n for n, m in model.named_modules() if n and n not in names
                                      and isinstance(m, FSDPModule)]},
                  "placements": {n: _placement(p) for n, p in model.named_parameters()},
                  "shards": {n: _local(p) for n, p in model.named_parameters()}}

        # A mesh passed in must be the one used: this one carries a dimension name no default mesh has.
        probe = build_model(inputs["model"])
        name = inputs["mesh_name"]
        learner.shard_model(probe, mesh=init_device_mesh(device.type, (ctx.world_size,), mesh_dim_names=(name,)),
                            **kwargs)
        result["given_mesh_used"] = all(_is_dtensor(p) and tuple(p.device_mesh.mesh_dim_names or ()) == (name,)
                                        for p in probe.parameters())

        trained = out if isinstance(out, nn.Module) else model
        optimizer = torch.optim.SGD(trained.parameters(), lr=inputs["lr"], momentum=inputs["momentum"])
        after_forward = {}
        for step, (images, labels) in enumerate(inputs["batches"]):
            optimizer.zero_grad(set_to_none=True)
            logits = trained(images.to(device))
            if step == 0:   # which blocks still hold their gathered (plain) parameters between forward and backward
                after_forward = {n: not any(_is_dtensor(p) for p in getattr(model, n).parameters()) for n in names}
            F.cross_entropy(logits, labels.to(device)).backward()
            optimizer.step()
    result["gathered_after_forward"] = after_forward
    result["trained"] = {n: _local(p) for n, p in model.named_parameters()}
    return result


# ================================================================ fsdp.checkpoint

def checkpoint(ctx, learner, inputs):
    """save_full_checkpoint() on a model sharded by the harness's plan and trained on this rank's batches; the bytes
    of the file right after it returned (or what is there instead)."""
    import torch
    import torch.distributed.checkpoint as dcp
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = torch.device(ctx.device)
    model = build_model(inputs["model"])
    mesh = init_device_mesh(device.type, (ctx.world_size,))
    for name in inputs["units"]:   # the harness's plan, innermost first; "" is the model itself
        fully_shard(model.get_submodule(name), mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=inputs["lr"])
    with float32():
        for images, labels in inputs["batches"]:   # BatchNorm statistics now differ per rank: rank 0's are saved
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
            optimizer.step()

    folder = ctx.scratch / f"fsdp_checkpoint_{inputs['nonce']}"
    folder.mkdir(exist_ok=True)
    path = folder / inputs["filename"]
    saves, sharded_saves = [], []

    def watched_save(obj, f, *args, **kwargs):
        saves.append(type(obj).__name__)
        time.sleep(SAVE_DELAY)
        return real_save(obj, f, *args, **kwargs)

    def watched(name, original):
        def call(*args, **kwargs):
            sharded_saves.append(name)
            return original(*args, **kwargs)
        return call

    with ExitStack() as stack:
        real_save = stack.enter_context(patched(torch, "save", watched_save, learner))
        for name in ("save", "async_save", "save_state_dict"):
            if hasattr(dcp, name):
                stack.enter_context(patched(dcp, name, watched(name, getattr(dcp, name)), learner))
        learner.save_full_checkpoint(model, str(path))
    found = ({"kind": "file", "bytes": path.read_bytes()} if path.is_file() else
             {"kind": "directory"} if path.is_dir() else {"kind": "missing"})
    return {"saves": saves, "sharded_saves": sharded_saves, **found}


# ================================================================ fsdp.train

class OptimizerProbe:
    """A global optimizer-step hook: what the first optimizer that steps holds on this rank (hints only)."""

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.optimizer, self.steps, self.held, self.kinds = None, 0, None, {}
        self.handle = register_optimizer_step_post_hook(self._after_step)

    def _after_step(self, optimizer, args, kwargs):
        import torch

        if self.optimizer is None:
            self.optimizer = optimizer
        if optimizer is not self.optimizer:
            return
        self.steps += 1
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]

        def nbytes(t):
            t = t.to_local() if _is_dtensor(t) else t
            return t.numel() * t.element_size()

        held = {"params": sum(nbytes(p) for p in params),
                "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
                "optimizer": sum(nbytes(v) for v in state)}
        if self.held is None or sum(held.values()) > sum(self.held.values()):
            self.held = held
        self.kinds = {"params": len(params), "dtensors": sum(_is_dtensor(p) for p in params),
                      "with_grad": sum(p.grad is not None for p in params)}

    def report(self) -> dict:
        return {"steps": self.steps, "held": self.held, **self.kinds}


def _losses(metrics) -> list | None:
    """Each epoch's train loss from what main() returned (None if it returned something else)."""
    try:
        return [float(e["train_loss"]) for e in metrics["epochs"]]
    except (TypeError, KeyError, ValueError, IndexError):
        return None


def train(ctx, learner, inputs):
    """main(argv) on every rank, on the harness's images; the losses main() returned, and what the optimizer held.

    The harness's synthetic images replace eurosat.data.synthetic_tensors, in the script and in
    the module its load_data comes from, for the two calls load_data makes: (n, seed) for
    training, (n // 4 or 16, seed + 1) for validation. The run gets a store of its own on the
    harness's port, up before the script starts (toolkit.script_store).
    """
    import torch.distributed as dist

    import eurosat.data

    seed = inputs["seed"]
    real, injected = secret_synthetic_tensors(inputs)

    folder = ctx.scratch / inputs["tag"]
    folder.mkdir(exist_ok=True)
    argv = [str(a) for a in inputs["argv"]] + ["--seed", str(seed), "--metrics", str(folder / "metrics.json"),
                                              "--checkpoint", str(folder / "model.pt")]
    owners = {id(m): m for m in (learner, sys.modules.get(getattr(getattr(learner, "load_data", None),
                                                                   "__module__", ""), None)) if m is not None}
    probe = OptimizerProbe()
    try:
        with ExitStack() as stack:
            stack.enter_context(environment({"LOCAL_RANK": str(ctx.local_rank)}))
            stack.enter_context(script_store(inputs["port"], ctx.rank, ctx.world_size))
            stack.enter_context(patched(eurosat.data, "synthetic_tensors", injected))
            for module in owners.values():   # `from eurosat.data import synthetic_tensors` binds the original
                if getattr(module, "synthetic_tensors", None) is real:
                    stack.enter_context(patched(module, "synthetic_tensors", injected))
            metrics = learner.main(argv)
    finally:
        probe.handle.remove()
        if dist.is_initialized():   # a script that forgot to clean up must not break the next run
            dist.destroy_process_group()
    return {"losses": _losses(metrics), "returned": type(metrics).__name__, "optimizer": probe.report()}


def warm_up(ctx, learner, inputs):
    """What every first training step loads once (torch._dynamo, which building an optimizer imports; the
    convolution and optimizer kernels; on a GPU the CUDA context), so that the measured run's memory is the
    training's own."""
    import torch
    import torch.nn.functional as F

    device = torch.device(ctx.device)
    weight = torch.zeros(2, 3, 3, 3, requires_grad=True, device=device)
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    F.conv2d(torch.ones(1, 3, 8, 8, device=device), weight).sum().backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {}


def saved(ctx, learner, inputs):
    """The checkpoint main() wrote, from rank 0. A task of its own, after the measured run: reading and sending
    the file must not count as the script's memory."""
    if ctx.rank != 0:
        return {}
    path = ctx.scratch / inputs["tag"] / "model.pt"
    return {"checkpoint": path.read_bytes() if path.is_file() else None}
