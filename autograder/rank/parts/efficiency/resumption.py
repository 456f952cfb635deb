"""Rank part of efficiency.resume: the harness's FSDP2 model and Adam, trained on this rank's slices, saved by the
learner's save_training_state at one world size; in another job, at another world size, a model with other weights
loaded by the learner's load_training_state and trained on. The checkpoint's files travel from one job to the
other through the harness.

What goes back: the losses of the steps this rank ran, the step load_training_state returned, the full parameters
after the continued steps, and the checkpoint's files. Whether the state was gathered is read from outside: the
bytes the save sent.
"""
from __future__ import annotations

from ...toolkit import build_model, float32

_TRAINED = {}   # folder -> (model, optimizer): the "train" task's, for the "save" task that follows in this process


def _sharded_model(inputs, device, world_size: int):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = build_model(inputs["model"]).to(device)
    mesh = init_device_mesh(device.type, (world_size,))
    for unit in model.blocks():
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=inputs["lr"])


def _train(model, optimizer, batches, device) -> list[float]:
    import torch.nn.functional as F

    losses = []
    for images, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images.to(device)), labels.to(device))
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def _files(ctx, inputs) -> dict:
    """"files": what the checkpoint's path holds, from rank 0 (the scratch folder is the job's, shared by its
    ranks: a sandbox's scratch is a tmpfs the harness cannot see). "put": rank 0 writes the files given into it."""
    folder = ctx.scratch / inputs["folder"]
    if ctx.rank != 0:
        return {}
    if inputs["phase"] == "put":
        folder.mkdir()
        for name, data in inputs["files"].items():
            (folder / name).write_bytes(data)
        return {}
    if not folder.exists():
        return {"kind": "missing"}
    if not folder.is_dir():
        return {"kind": "file"}
    return {"kind": "folder", "files": {f.name: f.read_bytes() for f in folder.iterdir()
                                        if f.is_file() and not f.is_symlink()}}


def resume(ctx, learner, inputs):
    """inputs: {"folder": the checkpoint's name in the job's scratch folder, "phase": "train" (build the harness's
    model from inputs["model"], train it on this rank's "batches" with Adam at "lr"), "save" (the trained model and
    optimizer through save_training_state at inputs["step"]: a task of its own, so that the bytes it sends are
    the save's), "files" and "put" (the checkpoint's files read out of, or written into, the scratch folder), or
    "load" (a model from inputs["model"] through load_training_state, then trained on "batches")}."""
    import torch

    device = torch.device(ctx.device)
    path = str(ctx.scratch / inputs["folder"])
    if inputs["phase"] in ("files", "put"):
        return _files(ctx, inputs)
    if inputs["phase"] == "train":
        model, optimizer = _sharded_model(inputs, device, ctx.world_size)
        with float32():
            losses = _train(model, optimizer, inputs["batches"], device)
        _TRAINED[inputs["folder"]] = model, optimizer
        return {"losses": losses}
    with float32():
        if inputs["phase"] == "save":
            model, optimizer = _TRAINED.pop(inputs["folder"])
            learner.save_training_state(model, optimizer, inputs["step"], path)
            return {}
        model, optimizer = _sharded_model(inputs, device, ctx.world_size)
        step = learner.load_training_state(model, optimizer, path)
        losses = _train(model, optimizer, inputs["batches"], device)
    full = {n: p.full_tensor().detach().to("cpu").clone() for n, p in model.named_parameters()}
    return {"step": step if isinstance(step, int) else repr(step)[:80], "losses": losses, "weights": full}
