"""Rank parts of 05_pipeline: call the learner's pipeline_parts.py / pipeline_train.py on this rank's inputs.

Each part receives only this rank's share (its own blocks, the images on the first rank, the
labels on the last rank), calls the learner's function and returns what it produced: a stage's
parameters, outputs, losses, gradients, weights. Expected values and every decision stay with
the harness. What the part saw on the way (steps recorded, optimizer steps counted, a rank that
skipped a collective) is returned under "seen", for the hints only.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..pipelining import (RESCUE_WAIT, harness_stage, mark, materialised, number_of, on_device, peers_released,
                          root_cause_in_message, wait_marks)
from ..timeline import Recorder, drive, record_own_steps
from ..toolkit import build_model, error_line, float32, patched, state_of


# ------------------------------------------------------------------ pipeline.split

def _stage_info(stage) -> dict:
    from torch.distributed.pipelining.stage import _PipelineStageBase

    if not isinstance(stage, _PipelineStageBase):
        return {"is_stage": False, "type": type(stage).__name__}
    return {"is_stage": True, "type": type(stage).__name__, "stage_index": int(stage.stage_index),
            "num_stages": int(stage.num_stages),
            "params": {n: p.detach().to("cpu").clone() for n, p in stage.submod.named_parameters()}}


def _safe_to_step(ctx, info: dict, children: list[str]) -> bool:
    """Whether the ranks' stages chain up (stage r on rank r, each block once, in order).

    Only decides whether running a step could deadlock (a broken split leaves ranks waiting
    for each other); the harness judges the split itself from every rank's own stage info.
    """
    import torch.distributed as dist

    blocks = []
    for name in info.get("params", {}):
        block = name.split(".")[0]
        if not blocks or blocks[-1] != block:
            blocks.append(block)
    mine = [info["is_stage"], info.get("stage_index"), info.get("num_stages"), blocks]
    every: list = [None] * ctx.world_size
    dist.all_gather_object(every, mine)
    chained = [b for _, _, _, bs in every for b in bs]
    return (all(s and i == r and n == ctx.world_size for r, (s, i, n, _) in enumerate(every))
            and chained == children)


def split(ctx, learner, inputs):
    """build_stage on the whole model; this rank's stage, and on the last rank one forward-only GPipe step's output."""
    import torch
    from torch.distributed.pipelining import ScheduleGPipe

    device = torch.device(ctx.device)
    model = build_model(inputs["model"]).to(device)
    with float32(), peers_released():
        with root_cause_in_message():
            stage = learner.build_stage(model, inputs["example"].to(device), ctx.device)
        info = _stage_info(stage)
        if not _safe_to_step(ctx, info, inputs["children"]):
            return {**info, "output": None}
        schedule = ScheduleGPipe(stage, n_microbatches=inputs["microbatches"])   # no loss: forward only
        with root_cause_in_message():
            out = schedule.step(inputs["images"].to(device)) if ctx.rank == 0 else schedule.step()
    last = ctx.rank == ctx.world_size - 1
    return {**info, "output": out.detach().to("cpu") if last and isinstance(out, torch.Tensor) else None}


# ------------------------------------------------------------------ pipeline.schedule

def schedule(ctx, learner, inputs):
    """make_schedule on the harness's stage; two steps; the last rank's losses and every rank's gradients."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.pipelining.schedules import _PipelineSchedule

    device = torch.device(ctx.device)
    stage = harness_stage(ctx, inputs["stage"])
    m = inputs["microbatches"]
    with float32(), peers_released():
        made = learner.make_schedule(stage, m, F.cross_entropy)
        seen = {"type": type(made).__name__, "declared": getattr(made, "_n_microbatches", None), "steps": []}
        if not isinstance(made, _PipelineSchedule):
            return {"is_schedule": False, "seen": seen}
        if seen["declared"] not in (None, m):   # other microbatches than the stage was set up for: stop here
            return {"is_schedule": True, "losses": None, "grads": None, "seen": seen}
        losses = []
        with Recorder() as rec:
            for _ in range(inputs["steps"]):
                for p in stage.submod.parameters():
                    p.grad = None
                got = drive(made, on_device(device, inputs["images"]), on_device(device, inputs["labels"]))
                losses.append([x.detach().to("cpu") for x in got])
        seen["steps"] = [s.to_json() for s in rec.steps]
    grads = {n: None if p.grad is None else p.grad.detach().to("cpu").clone()
             for n, p in stage.submod.named_parameters()}
    return {"is_schedule": True, "losses": losses if stage.is_last else None, "grads": grads, "seen": seen}


# ------------------------------------------------------------------ pipeline.step

def step(ctx, learner, inputs):
    """train_step batch after batch with the harness's stage, schedule and optimizer; what it returned, the weights."""
    import torch
    import torch.nn.functional as F
    from torch.distributed.pipelining import ScheduleGPipe

    device = torch.device(ctx.device)
    stage = harness_stage(ctx, inputs["stage"])
    made = ScheduleGPipe(stage, n_microbatches=inputs["microbatches"], loss_fn=F.cross_entropy)
    optimizer = torch.optim.SGD(stage.submod.parameters(), lr=inputs["lr"], momentum=inputs["momentum"])
    optimizer_steps = [0]
    optimizer.register_step_post_hook(lambda *_: optimizer_steps.__setitem__(0, optimizer_steps[0] + 1))
    returned, states, counts = [], [], []
    with float32(), peers_released(), Recorder() as rec:
        for x, y in zip(map(materialised, inputs["images"]), map(materialised, inputs["labels"])):
            returned.append(number_of(learner.train_step(made, optimizer, x.to(device), y.to(device))))
            states.append({n: p.detach().to("cpu").clone() for n, p in stage.submod.named_parameters()})
            counts.append(optimizer_steps[0])
    return {"returned": returned, "states": states,
            "seen": {"optimizer_steps": counts, "calls": [s.to_json() for s in rec.steps]}}


# ------------------------------------------------------------------ pipeline.checkpoint

def _checkpoint_keys(path: Path) -> list[str] | None:
    """Keys recorded in a DCP checkpoint's metadata (None if there is no readable checkpoint)."""
    import torch.distributed.checkpoint as dcp

    try:
        return sorted(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except Exception:   # noqa: no checkpoint, or not a DCP one
        return None


def checkpoint(ctx, learner, inputs):
    """save_stage on every rank, then load_full_model on the last rank alone; the weights it loaded.

    dcp.save and dcp.load are collective unless told otherwise. Two mistakes therefore hang
    instead of failing: some ranks skipping save_stage (the savers wait for them), and
    load_full_model running a collective dcp.load in one rank (it waits for the others). A
    rank that finished waits RESCUE_WAIT s for the others (marker files), then joins the
    pending collective with an empty state dict so that it ends. A load that could only end
    that way did not run in one process: the last rank then returns no weights.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    folder = ctx.scratch / inputs["folder"]
    folder.mkdir(exist_ok=True)
    path = folder / "checkpoint"
    last = ctx.world_size - 1
    stage = harness_stage(ctx, inputs["stage"])
    seen = {"skipped": False, "collective_load": False}
    with peers_released():
        learner.save_stage(stage, str(path))
    mark(folder, "saved", ctx.rank)
    if not wait_marks(folder, "saved", range(ctx.world_size), RESCUE_WAIT):
        # A peer is still inside save_stage: most likely in dcp.save, waiting for this rank, which skipped it.
        dcp.save({}, checkpoint_id=str(path))
        seen["skipped"] = True
        wait_marks(folder, "saved", range(ctx.world_size), RESCUE_WAIT)
    dist.barrier()
    if ctx.rank != last:
        if not wait_marks(folder, "loaded", [last], RESCUE_WAIT):
            # The last rank is still in load_full_model: a collective dcp.load, waiting for this rank.
            mark(folder, "rescued", ctx.rank)
            dcp.load({}, checkpoint_id=str(path))
        return {"seen": seen}
    seen["saved_keys"] = _checkpoint_keys(path)
    fresh = build_model(inputs["fresh"]).to(torch.device(ctx.device))
    try:
        returned = learner.load_full_model(fresh, str(path))
    except (Exception, dcp.api.CheckpointException) as exc:   # not an Exception; only this rank loads: no peer waits
        seen["load_error"] = error_line(exc)
        return {"state": None, "seen": seen}
    finally:
        mark(folder, "loaded", ctx.rank)
    if any((folder / f"rescued.rank{r}").exists() for r in range(last)):
        seen["collective_load"] = True
        return {"state": None, "seen": seen}
    loaded = returned if isinstance(returned, torch.nn.Module) else fresh
    seen["returned"] = type(returned).__name__
    return {"state": state_of(loaded), "seen": seen}


# ------------------------------------------------------------------ pipeline.train

_last_stage: dict = {}   # microbatches -> the stage of the script's last run with that many, for the picture


def train(ctx, learner, inputs):
    """One run of the learner's script, main(argv), on the harness's data; the last rank's losses and weights.

    The script's load_data is replaced for the run by one that returns this rank's share of
    the data (the images on the first rank, the labels and the validation set on the last
    rank, zeros of the same shape elsewhere). After the run the last rank reassembles the
    checkpoint the script wrote, with the script's own load_full_model.
    """
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from eurosat.model import EuroSATNet

    data = {k: materialised(v) for k, v in inputs["data"].items()}
    if not hasattr(learner, "load_data"):
        raise RuntimeError("pipeline_train.py no longer defines load_data(args), which the check replaces")

    def load_data(args):
        return (data["train_x"], data["train_y"], data["val_x"], data["val_y"],
                "Dataset: the check's synthetic images, sent by the harness")

    folder = ctx.scratch / inputs["folder"]
    folder.mkdir(exist_ok=True)
    path = folder / "checkpoint"
    argv = [*inputs["argv"], "--checkpoint", str(path), "--metrics", str(folder / f"metrics.rank{ctx.rank}.json")]
    optimizer_params: list = []
    hook = register_optimizer_step_post_hook(
        lambda optimizer, *_: optimizer_params.append({id(q) for g in optimizer.param_groups for q in g["params"]}))
    try:
        with float32(), patched(learner, "load_data", load_data), Recorder() as rec, peers_released():
            metrics = learner.main(argv)
    finally:
        hook.remove()
    metrics = metrics if isinstance(metrics, dict) else {}
    stage = next((s.stage for s in rec.steps if s.stage is not None), None)
    if stage is not None:
        _last_stage[rec.steps[-1].n_microbatches] = stage
    stage_params = {id(q) for q in stage.submod.parameters()} if stage is not None else set()
    scopes = sorted({"stage" if ps == stage_params else "superset" if ps > stage_params
                     else "disjoint" if not ps & stage_params else "partial" for ps in optimizer_params})
    seen = {"steps": [{"forwards": s.count("F"), "n_microbatches": s.n_microbatches} for s in rec.steps],
            "optimizer_steps": len(optimizer_params), "optimizer_scope": scopes}
    out = {"losses": None, "val_accuracy": None, "state": None, "seen": seen}
    if ctx.rank != ctx.world_size - 1:
        return out
    losses = metrics.get("losses")
    out["losses"] = [float(x) for x in losses] if isinstance(losses, list) else None
    accuracy = metrics.get("val_accuracy")
    out["val_accuracy"] = float(accuracy) if isinstance(accuracy, (int, float)) else None
    load = getattr(learner, "load_full_model", None) or getattr(sys.modules.get("pipeline_parts"), "load_full_model",
                                                                None)
    try:
        whole = load(EuroSATNet().to(torch.device(ctx.device)), str(path))
        out["state"] = state_of(whole)
    except (Exception, dcp.api.CheckpointException) as exc:   # the checkpoint does not reassemble: the judge says so
        seen["load_error"] = error_line(exc)
    return out


def timeline(ctx, learner, inputs):
    """A picture, not evidence: one GPipe and one 1F1B step on the learner's stage; this rank's events.

    The stage of the script's last run with as many microbatches is reused (tracing it again
    would cost more than the steps); without one, the learner's build_stage makes it.
    """
    import torch

    device = torch.device(ctx.device)
    build_stage = getattr(sys.modules.get("pipeline_parts"), "build_stage", None)
    if inputs["microbatches"] in _last_stage:
        stage = _last_stage[inputs["microbatches"]]
    elif build_stage is not None:
        stage = build_stage(build_model(inputs["model"]).to(device), inputs["example"].to(device), ctx.device)
    else:
        return {}
    with peers_released():
        return record_own_steps(stage, on_device(device, inputs["images"]), on_device(device, inputs["labels"]),
                                inputs["microbatches"])
