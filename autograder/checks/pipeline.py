"""Checks for 05_pipeline: build_stage, make_schedule, train_step, save_stage/load_full_model (pipeline_parts.py)
and the whole pipeline_train.py script (speed-up over one microbatch, timeline of the bubble).

Each exercise is tested on its own: only pipeline.split uses the learner's build_stage;
the other checks build the stage themselves (`_harness_stage`, the manual PipelineStage
route, which infers shapes at run time) so that one wrong function does not fail the
others, and so that a schedule with the wrong microbatch count runs and can be observed
instead of crashing on traced shapes. `autograder.timeline.Recorder` observes what the
schedules do (forward/backward per microbatch, the arguments of every step) without the
learner's code having to cooperate.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from pathlib import Path

from ..verdict import CheckFailed, expect
from . import DistributedCheck, Run, register

# ---------------------------------------------------------------- shared helpers


def _model(seed: int, *, norm: bool = True, blocks: int = 3, width: int = 16):
    import torch

    from eurosat.model import EuroSATNet

    torch.manual_seed(seed)
    return EuroSATNet(width=width, blocks=blocks, norm=norm)


def _data(seed: int, n: int):
    """n synthetic EuroSAT-like images (3 x 64 x 64, the real shape) and labels; the same on every rank."""
    from eurosat.data import synthetic_tensors

    return synthetic_tensors(n, seed=1000 + seed)


def _stage_units(names: list[str], world_size: int) -> list[list[str]]:
    """The reference split of top-level children into one group per stage (see timeline.reference_stage)."""
    units = names[:-1] if world_size < len(names) else names
    if world_size > len(units):
        raise ValueError(f"{world_size} stages, but the model has only {len(names)} blocks")
    starts = [s * len(units) // world_size for s in range(world_size)] + [len(names)]
    return [names[starts[s]:starts[s + 1]] for s in range(world_size)]


def _harness_stage(model, device):
    """This rank's stage, built by the harness (manual route): a copy of the model without the other blocks.

    EuroSATNet.forward runs its children in order, so deleting the blocks of other
    stages leaves a module that runs exactly this stage, with the model's own
    parameter names (conv_block2.0.weight).
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage

    rank, world_size = dist.get_rank(), dist.get_world_size()
    names = [n for n, _ in model.named_children()]
    mine = _stage_units(names, world_size)[rank]
    part = copy.deepcopy(model)
    for name in names:
        if name not in mine:
            delattr(part, name)
    return PipelineStage(part.to(device), rank, world_size, torch.device(device))


def _chunks(tensor, m: int):
    import torch

    return torch.tensor_split(tensor, m)


def _reference_outputs(model, images, m: int):
    """What the pipeline computes in training mode: the plain model on each microbatch (BatchNorm per microbatch)."""
    import torch

    model.train()
    return torch.cat([model(chunk) for chunk in _chunks(images, m)])


@contextmanager
def _root_cause_in_message():
    """Re-raise the learner's exception with its root cause in the message (the tracer wraps the real error)."""
    try:
        yield
    except Exception as exc:
        root = exc
        for _ in range(20):   # follow "raise ... from ..." to the original error
            following = root.__cause__ or root.__context__
            if following is None:
                break
            root = following
        if root is not exc and len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]}\n(caused by {type(root).__name__}: {str(root)[:600]})",)
        raise


def _pipeline_scenario(scenario):
    """Run a pipeline scenario in full float32 on GPUs (no TF32), so that comparisons with the
    single-process model on the CPU hold to the tolerances below; undo it afterwards (several
    checks may share one launch).
    """
    import functools

    @functools.wraps(scenario)
    def run(ctx, learner):
        import torch

        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return scenario(ctx, learner)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return run


def _gather(obj):
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _relative_error(a, b) -> float:
    """max |a - b| / max(|b|, tiny): one number per tensor pair, comparable across layers."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


# Errors the learner's code may cause inside torch.distributed.pipelining, and what they mean here.
_KNOWN_ERRORS = (
    (("to have 3 channels",),
     "The example microbatch must have the real shape, (microbatch size, 3, 64, 64): pass the example you are "
     "given (or one real microbatch of images) to pipeline(...), not a tensor of another shape."),
    (("Expected input batch_size",),
     "The stage was traced with an example whose batch size differs from the real microbatches: the example must "
     "be ONE microbatch (batch_size // n_microbatches images), not a whole batch or a single image."),
    (("_maybe_compute_loss", "target required for last stage"),
     "The last stage computes the loss, so it needs the labels: call schedule.step(target=labels, losses=losses) "
     "on the last rank; the first rank gets only the inputs (labels given to the first rank are never used)."),
    (("input to conv2d, but got input of size",),
     "A later stage received the logits of a whole model: every rank holds the whole model. Give each rank only "
     "its own blocks (pipeline(...) with a SplitPoint at each stage's first block, then pipe.build_stage(rank, ...))."),
    (("must be greater than or equal to the number of stages",),
     "Schedule1F1B needs at least as many microbatches as stages, and the baseline runs with one microbatch: use "
     "ScheduleGPipe (or fall back to it when n_microbatches < stage.num_stages)."),
    (("initialize the default process group twice",),
     "The process group already exists: call init_distributed() (it checks dist.is_initialized()) instead of "
     "dist.init_process_group() a second time."),
    (("Missing key in checkpoint",),
     "The checkpoint lacks some stages' tensors: every rank must call save_stage (dcp.save is collective, and each "
     "rank writes its own stage)."),
    (("losses but got 0",),
     "The schedule computed no loss: pass loss_fn=loss_fn to it; without a loss function, step() runs forward "
     "only."),
    (("step() requires gradients to be enabled",),
     "schedule.step runs backward: do not call it under torch.no_grad()."),
    (("cannot capture your model as a full graph",),
     "pipeline(...) could not trace the model with the example microbatch: pass a real microbatch "
     "(microbatch size, 3, 64, 64) of the model's input, on the model's device."),
)


def _explain(error: dict) -> str | None:
    text = f"{error['message']}\n{error.get('traceback', '')}"
    for needles, hint in _KNOWN_ERRORS:
        if any(n in text for n in needles):
            return hint
    return None


# ---------------------------------------------------------------- pipeline.split
# build_stage(model, example_microbatch, device) must give one stage per rank, cut between
# blocks, holding exactly the model's parameters (by name, shape and value) with none on two
# ranks and none missing. Each rank describes its stage; the ranks share their descriptions
# (a harness all_gather), and only if the split is sound the harness runs one GPipe step
# through the learner's stages and compares the output with the plain model's.


def _describe_stage(stage, reference) -> dict:
    from torch.distributed.pipelining.stage import _PipelineStageBase

    if not isinstance(stage, _PipelineStageBase):
        return {"is_stage": False, "type": type(stage).__name__}
    ref = dict(reference.named_parameters())
    params = []
    for name, p in stage.submod.named_parameters():
        same = None
        if name in ref and tuple(ref[name].shape) == tuple(p.shape):
            same = bool((p.detach().cpu() == ref[name].detach()).all())
        params.append([name, list(p.shape), same])
    return {"is_stage": True, "type": type(stage).__name__, "stage_index": int(stage.stage_index),
            "num_stages": int(stage.num_stages), "params": params}


def _split_problem(infos: list[dict], model_names: list[str], children: list[str]) -> str | None:
    """A short code for the first problem with the ranks' stages (the judge explains it), or None."""
    if not all(i["is_stage"] for i in infos):
        return "not-a-stage"
    if any(i["stage_index"] != r or i["num_stages"] != len(infos) for r, i in enumerate(infos)):
        return "indices"
    held = [[p[0] for p in i["params"]] for i in infos]
    if any(n not in model_names for names in held for n in names):
        return "unknown-names"
    if len(infos) > 1 and all(set(names) == set(model_names) for names in held):
        return "whole-model"
    owners = _block_owners(held)
    if any(len(ranks) > 1 for ranks in owners.values()):
        return "cut-inside-block" if not _duplicates(held) else "duplicated"
    if set(model_names) - {n for names in held for n in names}:
        return "missing"
    if any(not names for names in held):
        return "empty-stage"
    order = [children.index(b) for r in range(len(held)) for b in sorted(
        {n.split(".")[0] for n in held[r]}, key=children.index)]
    if order != sorted(order):
        return "order"
    if any(p[2] is not True for i in infos for p in i["params"]):
        return "values"
    return None


def _block_owners(held: list[list[str]]) -> dict[str, set[int]]:
    owners: dict[str, set[int]] = {}
    for rank, names in enumerate(held):
        for n in names:
            owners.setdefault(n.split(".")[0], set()).add(rank)
    return owners


def _duplicates(held: list[list[str]]) -> list[str]:
    seen, dup = set(), []
    for names in held:
        for n in set(names):
            (dup.append(n) if n in seen else seen.add(n))
    return sorted(dup)


def _split_scenario(ctx, learner):
    import torch.nn.functional as F
    from torch.distributed.pipelining import ScheduleGPipe

    p = ctx.params
    m, mb = p["microbatches"], p["microbatch_size"]
    model = _model(ctx.seed, norm=True, blocks=p["blocks"]).to(ctx.device)
    reference = _model(ctx.seed, norm=True, blocks=p["blocks"])   # untouched twin on the CPU: names, values, outputs
    images, labels = _data(ctx.seed, m * mb)
    example = images[:mb].clone()
    with _root_cause_in_message():
        stage = learner.build_stage(model, example.to(ctx.device), ctx.device)
    info = _describe_stage(stage, reference)
    infos = _gather(info)
    model_names = [n for n, _ in reference.named_parameters()]
    children = [n for n, _ in reference.named_children()]
    problem = _split_problem(infos, model_names, children)
    result = {**info, "problem": problem, "model_names": model_names, "children": children}
    if problem is None:
        # The split looks right: one GPipe step through the learner's stages must compute the plain model.
        schedule = ScheduleGPipe(stage, n_microbatches=m, loss_fn=F.cross_entropy)
        with _root_cause_in_message():
            out = _drive_output(schedule, images.to(ctx.device), labels.to(ctx.device))
        if out is not None:
            expected = _reference_outputs(reference, images, m).detach()
            result["output_error"] = _relative_error(out.detach().cpu(), expected)
    return result


def _drive_output(schedule, inputs, labels):
    """One step, inputs on the first rank and labels on the last; the merged output on the last rank."""
    import torch.distributed as dist

    rank, world_size = dist.get_rank(), dist.get_world_size()
    args = (inputs,) if rank == 0 else ()
    if rank == world_size - 1:
        return schedule.step(*args, target=labels, losses=[])
    schedule.step(*args)
    return None


_OUTPUT_RTOL = 1e-4  # float32; the pipeline runs the same layers on the same microbatches, only sends in between


def _judge_split(run: Run) -> str:
    ws = run.world_size
    infos = run.results()
    problem = infos[0]["problem"]
    model_names, children = infos[0]["model_names"], infos[0]["children"]
    if problem == "not-a-stage":
        bad = next(i for i in infos if not i["is_stage"])
        raise CheckFailed(f"build_stage returned a {bad['type']}, not a pipeline stage",
                          "Return pipe.build_stage(rank, device) (tracer frontend: pipeline + SplitPoint) or a "
                          "PipelineStage(submodule, rank, world_size, device) (manual frontend).")
    if problem == "indices":
        got = ", ".join(f"rank {r}: stage {i['stage_index']} of {i['num_stages']}" for r, i in enumerate(infos))
        raise CheckFailed(f"expected one stage per rank (rank r builds stage r of {ws}); got {got}",
                          "Cut the model into exactly world_size stages and build stage number dist.get_rank(): "
                          "one SplitPoint per stage boundary (world_size - 1 of them).")
    held = [[p[0] for p in i["params"]] for i in infos]
    if problem == "unknown-names":
        r, name = next((r, n) for r, names in enumerate(held) for n in names if n not in model_names)
        raise CheckFailed(f"rank {r}'s stage has a parameter named {name!r}, which the model does not have "
                          f"(the model's are like {model_names[0]!r})",
                          "Keep the model's parameter names: build the stage from the model's own blocks (pipeline + "
                          "SplitPoint, or delete the other blocks from a copy). An nn.Sequential of the blocks renames "
                          "them (0.0.weight), and then the stages' checkpoints do not load into the model.")
    if problem == "whole-model":
        raise CheckFailed(f"every rank's stage holds the whole model (all {len(model_names)} parameters on each "
                          f"of the {ws} ranks)",
                          "Each rank must hold only its own stage: split the model at block boundaries "
                          "(split_spec={'conv_block2': SplitPoint.BEGINNING, ...}) and build only stage "
                          "number rank; wrapping the whole model in PipelineStage on every rank copies it.")
    owners = _block_owners(held)
    if problem == "cut-inside-block":
        block, ranks = next((b, rs) for b, rs in owners.items() if len(rs) > 1)
        raise CheckFailed(f"block {block!r} is cut in two: its layers are on ranks {sorted(ranks)}",
                          "Cut only between blocks: put SplitPoint.BEGINNING on a top-level block name "
                          f"({', '.join(children[1:3])}), not on a layer inside a block ({children[1]}.3).")
    if problem == "duplicated":
        dup = _duplicates(held)
        raise CheckFailed(f"{len(dup)} parameter(s) are on more than one rank, e.g. {dup[0]!r}",
                          "Every block must belong to exactly one stage: each rank keeps only its own blocks.")
    if problem == "missing":
        missing = sorted(set(model_names) - {n for names in held for n in names})
        raise CheckFailed(f"{len(missing)} parameter(s) are in no stage, e.g. {missing[0]!r}",
                          "Together the stages must hold the whole model: the last stage runs up to and including "
                          "the head.")
    if problem == "empty-stage":
        r = next(r for r, names in enumerate(held) if not names)
        raise CheckFailed(f"rank {r}'s stage holds no parameters",
                          "Give every stage at least one block: cut at world_size - 1 different block boundaries.")
    if problem == "order":
        raise CheckFailed("the stages do not follow the model's order (stage r must run before stage r + 1)",
                          "Rank 0 takes the first blocks, the last rank the last blocks and the head.")
    if problem == "values":
        r, name = next((r, p[0]) for r, i in enumerate(infos) for p in i["params"] if p[2] is not True)
        raise CheckFailed(f"rank {r}'s {name!r} differs from the model's (shape or values)",
                          "Build the stages from the model you are given: do not create or re-initialise a model.")
    err = infos[-1].get("output_error")
    expect(err is not None and err <= _OUTPUT_RTOL,
           f"the pipeline's output differs from the plain model's (relative error {err:.2g})",
           "The stages hold the right blocks but do not compute the model: keep the blocks' order and run "
           "them unchanged.")
    split = " | ".join(", ".join(sorted({n.split('.')[0] for n in names}, key=children.index)) for names in held)
    return f"{ws} stages, cut between blocks ({split}); together exactly the model's parameters, same output"


register(DistributedCheck(
    id="pipeline.split", functions=("build_stage",), scenario=_pipeline_scenario(_split_scenario), judge=_judge_split,
    explain=_explain, defaults={"microbatches": 2, "microbatch_size": 2, "blocks": 3}))


# ---------------------------------------------------------------- pipeline.schedule
# make_schedule(stage, n_microbatches, loss_fn) must run the batch as n_microbatches
# microbatches, with backward (a loss function) and gradients averaged over microbatches.
# The harness builds the stage, reads the microbatch count the schedule was built for (another
# count would cut the batch into microbatches the stage was not set up for), drives two steps,
# and counts forward and backward calls per microbatch on every rank.


def _schedule_scenario(ctx, learner):
    import torch.nn.functional as F
    from torch.distributed.pipelining.schedules import _PipelineSchedule

    from ..timeline import Recorder, drive

    p = ctx.params
    m, mb = p["microbatches"], p["microbatch_size"]
    model = _model(ctx.seed, norm=False)
    reference = _model(ctx.seed, norm=False)
    stage = _harness_stage(model, ctx.device)
    schedule = learner.make_schedule(stage, m, F.cross_entropy)
    if not isinstance(schedule, _PipelineSchedule):
        return {"type": type(schedule).__name__, "is_schedule": False}
    declared = getattr(schedule, "_n_microbatches", m)
    if declared != m:   # another count would cut the batch into other (maybe unequal) microbatches: stop here
        return {"type": type(schedule).__name__, "is_schedule": True, "declared": declared}
    images, labels = _data(ctx.seed, m * mb)
    losses_seen = []
    with Recorder() as rec:
        for _ in range(2):
            for prm in stage.submod.parameters():
                prm.grad = None
            losses = drive(schedule, images.to(ctx.device), labels.to(ctx.device))
            losses_seen.append([float(x) for x in losses])
    # The gradient of one step must be the whole batch's mean-loss gradient (losses averaged over microbatches).
    ref_loss = F.cross_entropy(reference(images), labels)
    ref_loss.backward()
    ref_grads = dict(reference.named_parameters())
    ratio = []
    for name, prm in stage.submod.named_parameters():
        if prm.grad is not None:
            g, r = prm.grad.detach().cpu().double(), ref_grads[name].grad.double()
            ratio.append(float(g.norm() / r.norm().clamp_min(1e-30)))
    ref_chunk_losses = [float(F.cross_entropy(reference(x), y)) for x, y in zip(_chunks(images, m), _chunks(labels, m))]
    return {"is_schedule": True, "type": type(schedule).__name__, "steps": [s.to_json() for s in rec.steps],
            "losses": losses_seen, "ref_chunk_losses": ref_chunk_losses, "grad_ratio": ratio,
            "is_last": stage.is_last}


def _judge_schedule(run: Run) -> str:
    m, mb = run.params["microbatches"], run.params["microbatch_size"]
    results = run.results()
    for r, res in enumerate(results):
        expect(res["is_schedule"], f"make_schedule returned a {res['type']}, not a pipeline schedule",
               "Return a schedule from torch.distributed.pipelining, e.g. ScheduleGPipe(stage, n_microbatches, "
               "loss_fn=loss_fn).")
    name = results[0]["type"]
    for r, res in enumerate(results):
        if "declared" in res:
            raise CheckFailed(f"asked for {m} microbatches, make_schedule built a {name} for {res['declared']}",
                              "make_schedule ignores n_microbatches: pass it on, e.g. ScheduleGPipe(stage, "
                              "n_microbatches=n_microbatches, loss_fn=loss_fn); do not write a fixed number.")
        for step in res["steps"]:
            f, b = step["forwards"], step["backwards"]
            if f != m:
                raise CheckFailed(f"asked for {m} microbatches, the schedule ran {f} forward pass(es) per step on "
                                  f"rank {r} (microbatches of {step['input_batches'][:1] or '?'} images)",
                                  "make_schedule ignores n_microbatches: pass it on, e.g. ScheduleGPipe(stage, "
                                  "n_microbatches=n_microbatches, loss_fn=loss_fn); do not write a fixed number.")
            if b == 0:
                raise CheckFailed(f"rank {r} ran no backward pass: the schedule has no loss function",
                                  "Pass loss_fn=loss_fn to the schedule: without it, step() only runs forward.")
            expect(b == m, f"rank {r} ran {b} backward passes for {m} microbatches",
                   "Use one of the built-in schedules (ScheduleGPipe or Schedule1F1B) unchanged.")
            if r == 0:
                expect(all(x == mb for x in step["input_batches"]),
                       f"the first stage got microbatches of {step['input_batches']} images, expected {mb} each",
                       "Let the schedule split the batch: one microbatch is batch_size // n_microbatches images.")
    last = results[-1]
    for losses in last["losses"]:
        expect(len(losses) == m, f"the last stage reported {len(losses)} microbatch losses, expected {m}",
               "Pass loss_fn to the schedule; the last stage then computes one loss per microbatch.")
    ref = last["ref_chunk_losses"]
    expect(all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(last["losses"][0], ref)),
           f"the microbatch losses {[round(x, 4) for x in last['losses'][0]]} are not the loss function's "
           f"{[round(x, 4) for x in ref]}", "Pass the loss_fn you are given to the schedule, unchanged.")
    for r, res in enumerate(results):
        ratios = res["grad_ratio"]
        if ratios and not all(math.isclose(x, 1.0, rel_tol=1e-3) for x in ratios):
            scale = sum(ratios) / len(ratios)
            hint = ("The gradients are the sum over microbatches, not the mean: keep scale_grads=True (the default) "
                    "when loss_fn returns a mean." if math.isclose(scale, m, rel_tol=1e-2) else
                    "Use the schedule's defaults, so that gradients are averaged over the microbatches.")
            raise CheckFailed(f"rank {r}: the gradients are {scale:.3g} x the whole batch's mean-loss gradient",
                              hint)
    return f"{name} runs {m} microbatches of {mb} images with backward on all {run.world_size} ranks"


register(DistributedCheck(
    id="pipeline.schedule", functions=("make_schedule",), scenario=_pipeline_scenario(_schedule_scenario),
    judge=_judge_schedule, explain=_explain, defaults={"microbatches": 3, "microbatch_size": 2}))


# ---------------------------------------------------------------- pipeline.step
# train_step(schedule, optimizer, inputs, labels): after several batches each stage's
# parameters must match a single-process model trained on the same batches, the returned
# loss must be the batch's mean loss (last rank; None elsewhere), and the optimizer must step
# exactly once per batch (counted with a step hook). Every rank replays the single-process
# training itself, and the same training without zero_grad, to name that mistake when the
# parameters differ.
#
# Tolerance: the model has no BatchNorm (norm=False), so the pipeline computes the same
# function as the single process; only float32 sums run in another order (per microbatch,
# then scaled by 1/m). That differs by ~1e-6 relative after a few steps; accumulated gradients
# or a missing step change parameters by 1e-2 relative or more. Hence rtol 1e-4 (relative to
# each tensor's largest value).

_STEP_RTOL = 1e-4
_LR, _MOMENTUM = 0.05, 0.9


def _replay(model, batches, m: int, *, zero_grad: bool = True) -> tuple[list[dict], list[float]]:
    """Single-process training on `batches`: parameters after each batch, and each batch's loss.

    zero_grad=False replays the pipeline without zero_grad exactly: the schedule adds the new
    microbatch gradients to what .grad holds, then divides all of .grad by m (scale_grads).
    """
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=_LR, momentum=_MOMENTUM)
    states, losses = [], []
    for x, y in batches:
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        else:
            for q in model.parameters():
                if q.grad is not None:
                    q.grad.div_(m)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        states.append({n: q.detach().clone() for n, q in model.named_parameters()})
    return states, losses


def _step_scenario(ctx, learner):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.pipelining import ScheduleGPipe

    from ..timeline import Recorder

    p = ctx.params
    m, mb, n_batches = p["microbatches"], p["microbatch_size"], p["batches"]
    model = _model(ctx.seed, norm=False)
    stage = _harness_stage(model, ctx.device)
    schedule = ScheduleGPipe(stage, n_microbatches=m, loss_fn=F.cross_entropy)
    optimizer = torch.optim.SGD(stage.submod.parameters(), lr=_LR, momentum=_MOMENTUM)
    steps_taken = [0]
    optimizer.register_step_post_hook(lambda *_: steps_taken.__setitem__(0, steps_taken[0] + 1))
    images, labels = _data(ctx.seed, n_batches * m * mb)
    batches = list(zip(images.split(m * mb), labels.split(m * mb)))
    returned, step_counts, stage_states = [], [], []
    with Recorder() as rec:
        for x, y in batches:
            value = learner.train_step(schedule, optimizer, x.to(ctx.device), y.to(ctx.device))
            returned.append({"type": type(value).__name__,
                             "value": float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                             else (float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 else None)})
            step_counts.append(steps_taken[0])
            stage_states.append({n: q.detach().cpu().clone() for n, q in stage.submod.named_parameters()})
    dist.barrier()
    # The same batches in one process: correct training, and training that never zeroes the gradients.
    compare, ref_losses = {}, None
    for mode, zero in (("correct", True), ("accumulate", False)):
        states, losses = _replay(_model(ctx.seed, norm=False), batches, m, zero_grad=zero)
        ref_losses = losses if zero else ref_losses
        compare[mode] = [max((_relative_error(mine[n], ref[n]) for n in mine), default=0.0)
                         for mine, ref in zip(stage_states, states)]
    chunk_losses = []
    if stage.is_last:
        reference = _model(ctx.seed, norm=False)
        x, y = batches[0]
        chunk_losses = [float(F.cross_entropy(reference(a), b)) for a, b in zip(_chunks(x, m), _chunks(y, m))]
    return {"returned": returned, "step_counts": step_counts, "errors": compare, "ref_losses": ref_losses,
            "first_chunk_losses": chunk_losses, "is_last": stage.is_last,
            "calls": [s.to_json() for s in rec.steps]}


def _judge_step(run: Run) -> str:
    ws, m = run.world_size, run.params["microbatches"]
    n = run.params["batches"]
    results = run.results()
    for r, res in enumerate(results):
        calls = res["calls"]
        expect(len(calls) == n, f"rank {r} called schedule.step {len(calls)} times for {n} batches",
               "Call schedule.step exactly once per batch: the schedule itself runs the microbatches.")
        if r == 0 and ws > 1:
            expect(all(c["has_inputs"] for c in calls), "the first rank called schedule.step without the inputs",
                   "The first stage reads the images: schedule.step(inputs) on rank 0.")
        if r == ws - 1:
            expect(all(c["has_target"] for c in calls), "the last rank called schedule.step without target=labels",
                   "The last stage computes the loss: schedule.step(target=labels, losses=losses) on the last "
                   "rank (the labels are useless on the first rank).")
            expect(all(c["has_losses"] for c in calls), "the last rank did not pass losses=[] to schedule.step",
                   "Pass an empty list as losses=...: the schedule fills it with one loss per microbatch.")
    for r, res in enumerate(results):
        counts = res["step_counts"]
        per_batch = [b - a for a, b in zip([0] + counts, counts)]
        if any(k == 0 for k in per_batch):
            raise CheckFailed(f"rank {r}: the optimizer stepped {counts[-1]} time(s) in {n} batches "
                              f"(per batch: {per_batch})",
                              "Call optimizer.step() once per batch, inside train_step after schedule.step; "
                              "stepping once per epoch wastes every other batch's gradients.")
        if any(k > 1 for k in per_batch):
            raise CheckFailed(f"rank {r}: the optimizer stepped {max(per_batch)} times for one batch",
                              "Call optimizer.step() once per batch, after schedule.step, not once per microbatch.")
    for r, res in enumerate(results):
        err = res["errors"]
        if max(err["correct"]) > _STEP_RTOL:
            first = next(i for i, e in enumerate(err["correct"]) if e > _STEP_RTOL)
            if max(err["accumulate"]) <= _STEP_RTOL:
                raise CheckFailed(f"rank {r}: after batch {first + 1} the stage's parameters match training whose "
                                  "gradients are never zeroed (they accumulate across batches)",
                                  "Call optimizer.zero_grad() at the start of train_step: pipeline schedules add "
                                  "into .grad and never clear it.")
            raise CheckFailed(f"rank {r}: after batch {first + 1} the stage's parameters differ from single-process "
                              f"training on the same batches (relative error {err['correct'][first]:.2g}, "
                              f"tolerance {_STEP_RTOL:g})",
                              "One step per batch: zero_grad(), schedule.step(...) (inputs on the first rank, "
                              "target on the last), optimizer.step().")
    for r, res in enumerate(results[:-1]):
        got = [x["type"] for x in res["returned"]]
        expect(all(t == "NoneType" for t in got), f"rank {r} (not the last stage) returned {got[0]}, not None",
               "Only the last stage has the loss: return None on the other ranks.")
    last = results[-1]
    ref = last["ref_losses"]
    for i, (got, want) in enumerate(zip(last["returned"], ref)):
        expect(got["type"] in ("float", "int"), f"the last rank returned a {got['type']}, not a float",
               "Return a Python float: e.g. torch.stack(losses).mean().item().")
        value = got["value"]
        if not math.isclose(value, want, rel_tol=1e-4, abs_tol=1e-6):
            chunks = last["first_chunk_losses"]
            if math.isclose(value, want * m, rel_tol=1e-3):
                hint = "That is the sum of the microbatch losses: return their mean."
            elif i == 0 and chunks and math.isclose(value, chunks[-1], rel_tol=1e-4):
                hint = "That is the last microbatch's loss only: return the mean over all microbatches."
            else:
                hint = "Return the mean of the losses the schedule put in losses=[...], as a float."
            raise CheckFailed(f"batch {i + 1}: train_step returned loss {value:.5f}, expected {want:.5f} (the mean "
                              f"over the {m} microbatches)", hint)
    return (f"{n} batches: parameters on all {ws} stages match single-process training (rtol {_STEP_RTOL:g}), "
            "losses match, one optimizer step per batch")


register(DistributedCheck(
    id="pipeline.step", functions=("train_step",), scenario=_pipeline_scenario(_step_scenario), judge=_judge_step,
    explain=_explain, defaults={"microbatches": 4, "microbatch_size": 2, "batches": 3}))


# ---------------------------------------------------------------- pipeline.checkpoint
# save_stage(stage, path) on every rank, then load_full_model(model, path) on the last rank
# alone, as the script does (and as a notebook kernel would, in one process): the reassembled
# model must hold every stage's trained tensors (parameters and BatchNorm buffers) and compute
# the pipeline's outputs.
#
# dcp.save and dcp.load are collective unless told otherwise (no_dist=True). Two mistakes
# therefore hang instead of failing: some ranks skipping save_stage (the savers wait for them),
# and load_full_model calling dcp.load as a collective in one rank (it waits for the others).
# The harness notices (a marker file per rank: a rank finished, another did not within
# RESCUE_WAIT s), joins the pending collective with an empty state dict so that it ends, and
# reports the mistake instead of a time-out.

RESCUE_WAIT = 10.0


def _mark(ctx, name: str) -> None:
    (ctx.job_dir / f"{name}.rank{ctx.rank}").write_text("1")


def _wait_marks(ctx, name: str, timeout: float, ranks=None) -> bool:
    ranks = range(ctx.world_size) if ranks is None else ranks
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((ctx.job_dir / f"{name}.rank{r}").exists() for r in ranks):
            return True
        time.sleep(0.05)
    return False


def _checkpoint_scenario(ctx, learner):
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    import torch.nn.functional as F
    from torch.distributed.pipelining import ScheduleGPipe

    from ..timeline import drive

    p = ctx.params
    m, mb = p["microbatches"], p["microbatch_size"]
    path = str(ctx.job_dir / "checkpoint")
    last = ctx.world_size - 1
    model = _model(ctx.seed, norm=True)
    stage = _harness_stage(model, ctx.device)
    schedule = ScheduleGPipe(stage, n_microbatches=m, loss_fn=F.cross_entropy)
    optimizer = torch.optim.SGD(stage.submod.parameters(), lr=_LR, momentum=_MOMENTUM)
    images, labels = _data(ctx.seed, 3 * m * mb)
    batches = list(zip(images.split(m * mb), labels.split(m * mb)))
    for x, y in batches[:2]:            # train a little: weights and BatchNorm statistics leave their initial values
        optimizer.zero_grad()
        drive(schedule, x.to(ctx.device), y.to(ctx.device))
        optimizer.step()
    dist.barrier()

    learner.save_stage(stage, path)
    _mark(ctx, "saved")
    skipped = False
    if not _wait_marks(ctx, "saved", RESCUE_WAIT):
        # A rank is still inside save_stage: most likely in dcp.save, waiting for this rank, which skipped it.
        dcp.save({}, checkpoint_id=path)
        skipped = True
        _wait_marks(ctx, "saved", RESCUE_WAIT)
    trained = {k: v.detach().cpu().clone() for k, v in stage.submod.state_dict().items()}
    every = _gather({"state": trained, "skipped": skipped, "keys": sorted(trained)})
    x, y = batches[2]
    out = _drive_output(schedule, x.to(ctx.device), y.to(ctx.device))  # the pipeline's output (last rank)
    dist.barrier()

    result = {"skipped": [r for r, e in enumerate(every) if e["skipped"]], "stage_keys": [e["keys"] for e in every],
              "collective_load": False}
    if ctx.rank != last:
        if not _wait_marks(ctx, "loaded", RESCUE_WAIT, ranks=[last]):
            # The last rank is still in load_full_model: a collective dcp.load, waiting for this rank.
            dcp.load({}, checkpoint_id=path)
            result["collective_load"] = True
        return result
    result["saved_keys"] = _checkpoint_keys(path)
    fresh = _model(ctx.seed + 7919, norm=True)
    try:
        returned = learner.load_full_model(fresh, path)
    except (Exception, dcp.api.CheckpointException) as exc:  # only this rank loads: no peer is left waiting
        result["load_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
        return result
    finally:
        _mark(ctx, "loaded")
    loaded = returned if isinstance(returned, torch.nn.Module) else fresh
    full_state = {k: v for e in every for k, v in e["state"].items()}
    state = loaded.state_dict()
    result["missing"] = sorted(set(full_state) - set(state))
    result["wrong"] = sorted(k for k in full_state if k in state and not torch.equal(state[k].cpu(), full_state[k]))
    result["output_error"] = _relative_error(_reference_outputs(loaded, x, m).detach(), out.detach().cpu())
    return result


def _checkpoint_keys(path: Path) -> list[str] | None:
    """Keys recorded in a DCP checkpoint's metadata (None if there is no readable checkpoint)."""
    import torch.distributed.checkpoint as dcp

    try:
        return sorted(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    except Exception:
        return None


def _judge_checkpoint(run: Run) -> str:
    ws = run.world_size
    results = run.results()
    last = results[-1]
    stage_keys = last["stage_keys"]
    if any(r["collective_load"] for r in results[:-1]):
        raise CheckFailed("load_full_model waited for the other ranks: its dcp.load ran as a collective although "
                          "only one process loads",
                          "Load in one process with dcp.load(state, checkpoint_id=path, no_dist=True): without "
                          "no_dist, DCP coordinates with every rank of the process group.")
    if last["skipped"]:
        savers = [r for r in range(ws) if r not in last["skipped"]]
        raise CheckFailed(f"only rank(s) {savers} called dcp.save in save_stage; rank(s) {last['skipped']} returned "
                          "without saving, so their stages are not in the checkpoint (and the savers waited for them)",
                          "Every rank must save its own stage: call dcp.save(stage.submod.state_dict(), "
                          "checkpoint_id=path) on every rank, not only on rank 0. DCP is collective: each rank "
                          "writes its own part, rank 0 writes the metadata.")
    saved = last.get("saved_keys")
    expect(saved is not None, "save_stage wrote no torch.distributed.checkpoint checkpoint at the given path",
           "Save with torch.distributed.checkpoint: dcp.save(stage.submod.state_dict(), checkpoint_id=path).")
    for r, keys in enumerate(stage_keys):
        absent = [k for k in keys if k not in saved]
        if absent:
            only = [s for s, ks in enumerate(stage_keys) if all(k in saved for k in ks)]
            buffers = all("running_" in k or "num_batches" in k for k in absent)
            hint = ("Save stage.submod.state_dict(): it holds the BatchNorm running statistics too, which "
                    "named_parameters() leaves out." if buffers else
                    "Every rank must save its own stage: call save_stage (dcp.save) on every rank, not only on "
                    "rank 0.")
            raise CheckFailed(f"stage {r}'s {len(absent)} tensor(s) are not in the checkpoint (e.g. {absent[0]!r}); "
                              f"complete stages: {only}", hint)
    if "load_error" in last:
        raise CheckFailed(f"load_full_model raised {last['load_error']}",
                          "Load in one process: state = model.state_dict(); dcp.load(state, checkpoint_id=path, "
                          "no_dist=True); model.load_state_dict(state).")
    expect(not last["missing"], f"the reassembled model lacks {last['missing'][:3]}",
           "Load into the whole model's state_dict() and load_state_dict it strictly.")
    expect(not last["wrong"], f"after load_full_model, {len(last['wrong'])} tensor(s) differ from the trained stages "
                              f"(e.g. {last['wrong'][0] if last['wrong'] else ''!r})",
           "dcp.load fills the state dict you pass; then call model.load_state_dict(state) (strict) so that the "
           "model takes the loaded values.")
    err = last["output_error"]
    expect(err <= _OUTPUT_RTOL,
           f"the reassembled model's output differs from the pipeline's (relative error {err:.2g})",
           "Load every stage's tensors into the plain model, under the same names.")
    return (f"all {ws} stages saved with DCP; the reassembled model loads strictly and computes the pipeline's "
            "outputs")


register(DistributedCheck(
    id="pipeline.checkpoint", functions=("save_stage", "load_full_model"),
    scenario=_pipeline_scenario(_checkpoint_scenario), judge=_judge_checkpoint, explain=_explain,
    defaults={"microbatches": 2, "microbatch_size": 2}))


# ---------------------------------------------------------------- pipeline.train
# The learner's whole script, pipeline_train.py, run in the ranks through its main(argv):
# the same pipeline with --microbatches m and with --microbatches 1 (no overlap: one stage
# works while the others wait), in alternating pairs (1, m), (m, 1), ... in this one job.
# Each run trains `steps` batches; the run's time is the fastest schedule.step after the first
# (warm-up) step, on the slowest rank; the speed-up is the median of the per-pair ratios
# (autograder.measure). Along the way: the schedule ran m microbatches, the optimizer held
# exactly this rank's stage and stepped once per batch, the script evaluated the reassembled
# model, and the checkpoint holds every stage. Finally the timeline of one GPipe and one 1F1B
# step (the learner's build_stage) shows the bubble.


def _train_scenario(ctx, learner):
    import sys

    import torch.distributed as dist

    from ..measure import pair_order
    from ..timeline import Recorder, record_schedules, reference_stage

    p = ctx.params
    m, batch, steps = p["microbatches"], p["batch_size"], p["steps"]
    optimizer_steps: list = []

    def on_step(optimizer, *_):
        optimizer_steps.append({id(q) for g in optimizer.param_groups for q in g["params"]})

    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(on_step)
    runs = []
    try:
        for pair in pair_order(p["pairs"]):
            for side in pair:
                n_mb = 1 if side == "a" else m
                i = len(runs)
                argv = ["--microbatches", str(n_mb), "--batch-size", str(batch), "--max-steps", str(steps),
                        "--epochs", "1", "--data", "synthetic", "--limit", str(p["images"]), "--seed", str(ctx.seed),
                        "--checkpoint", str(ctx.job_dir / f"checkpoint{i}"),
                        "--metrics", str(ctx.job_dir / f"metrics{i}.rank{ctx.rank}.json")]
                del optimizer_steps[:]
                with Recorder() as rec:
                    metrics = learner.main(argv)
                runs.append(_describe_run(n_mb, rec, optimizer_steps, metrics))
    finally:
        hook.remove()
    dist.barrier()
    checkpoint_keys = _checkpoint_keys(ctx.job_dir / f"checkpoint{len(runs) - 1}") if ctx.rank == 0 else None
    # The timeline: one GPipe and one 1F1B step on the learner's split (the reference split if
    # pipeline_parts is not importable), batches of the same size.
    parts = sys.modules.get("pipeline_parts")
    build = getattr(parts, "build_stage", None) or reference_stage
    images, labels = _data(ctx.seed, batch)
    model = _model(ctx.seed, norm=True).to(ctx.device)
    stage = build(model, images[: batch // m].to(ctx.device), ctx.device)
    timeline = record_schedules(stage, images.to(ctx.device), labels.to(ctx.device), m)
    return {"runs": runs, "checkpoint_keys": checkpoint_keys, "timeline": timeline,
            "model_keys": sorted(_model(0).state_dict())}


def _describe_run(n_mb: int, rec, optimizer_steps: list, metrics) -> dict:
    """One main() run as the judge needs it: steps, timings, optimizer steps and scope, metrics."""
    steps = rec.steps
    stage = steps[0].stage if steps else None
    stage_params = {id(q) for q in stage.submod.parameters()} if stage is not None else set()
    scopes = []
    for params in optimizer_steps:
        scopes.append("stage" if params == stage_params else "superset" if params > stage_params
                      else "disjoint" if not params & stage_params else "partial")
    metrics = metrics if isinstance(metrics, dict) else {}
    losses = metrics.get("losses") or []
    return {"microbatches": n_mb, "n_steps": len(steps), "calls": [s.to_json() for s in steps],
            "step_seconds": [s.seconds for s in steps],
            "best_seconds": min((s.seconds for s in steps[1:]), default=0.0),
            "optimizer_steps": len(optimizer_steps), "optimizer_scope": sorted(set(scopes)),
            "val_accuracy": metrics.get("val_accuracy"), "losses": [float(x) for x in losses
                                                                      if isinstance(x, (int, float))],
            "metrics_type": type(metrics).__name__}


def _judge_train(run: Run) -> str:
    from ..measure import summarize
    from ..timeline import ideal_speedup

    ws, m = run.world_size, run.params["microbatches"]
    steps = run.params["steps"]
    results = run.results()
    for r, res in enumerate(results):
        for one in res["runs"]:
            k = one["microbatches"]
            expect(one["n_steps"] > 0, f"rank {r}: main() trained without calling schedule.step (--microbatches {k})",
                   "Train with a pipeline schedule: train_step(schedule, optimizer, images, labels) for every batch.")
            expect(one["n_steps"] == steps, f"rank {r}: {one['n_steps']} schedule steps with --max-steps {steps}",
                   "Call train_step once per batch and stop after --max-steps batches (the loop is given).")
            forwards = {c["forwards"] for c in one["calls"]}
            expect(forwards == {k}, f"rank {r}: with --microbatches {k} the schedule ran {sorted(forwards)} "
                                    "microbatch(es) per step",
                   "Pass args.microbatches to make_schedule, and an example of batch_size // microbatches images "
                   "to build_stage.")
            expect(one["optimizer_steps"] == one["n_steps"],
                   f"rank {r}: {one['optimizer_steps']} optimizer step(s) for {one['n_steps']} batches",
                   "Step the optimizer once per batch (train_step does it), not once per epoch.")
            scope = one["optimizer_scope"]
            if "superset" in scope:
                raise CheckFailed(f"rank {r}: the optimizer holds the whole model's parameters, not only this "
                                  "rank's stage",
                                  "Scope the optimizer to the local stage: torch.optim.SGD(stage.submod.parameters(), "
                                  "...). The other ranks own, and update, the other blocks.")
            expect(scope == ["stage"] or not scope,
                   f"rank {r}: the optimizer does not hold this rank's stage parameters ({', '.join(scope)})",
                   "Create the optimizer over stage.submod.parameters(): those are the tensors this rank trains.")
    last = results[-1]["runs"]
    for one in last:
        acc = one["val_accuracy"]
        expect(isinstance(acc, (int, float)) and 0 <= acc <= 1,
               f"the last rank's metrics have val_accuracy={acc!r}",
               "After training, save the stages, reassemble the plain model with load_full_model on the last rank, "
               "and set val_accuracy from it (traced stages stay in training mode).")
        expect(one["losses"] and all(math.isfinite(x) for x in one["losses"]),
               "the last rank recorded no finite training losses", "Append train_step's loss on the last rank.")
    keys = results[0]["checkpoint_keys"]
    expect(keys is not None and not (set(results[0]["model_keys"]) - set(keys)),
           "the script's checkpoint does not hold the whole model",
           "Call save_stage(stage, args.checkpoint) on every rank after training.")

    if not run.params.get("judge_speed", True):   # a correctness-only variant (hidden tests): no timing verdict
        return (f"the script trained with 1 and {m} microbatches on {ws} stages: microbatches, optimizer scope and "
                "steps, evaluation and checkpoint are right (speed not judged in this variant)")
    # Speed-up: pair i = (one microbatch, m microbatches). A run's time is its fastest step after the
    # warm-up (other processes on a shared machine only ever add time), on the slowest rank.
    per_run = [max(res["runs"][i]["best_seconds"] for res in results) for i in range(len(results[0]["runs"]))]
    baseline = [s for s, one in zip(per_run, results[0]["runs"]) if one["microbatches"] == 1]
    parallel = [s for s, one in zip(per_run, results[0]["runs"]) if one["microbatches"] != 1]
    measured = summarize(baseline, parallel)
    speedup, ideal = measured["median_ratio"], ideal_speedup(ws, m)
    # Pass line: a share of the ideal speed-up (course.yaml: min_efficiency per profile).
    threshold = run.thresholds.get("min_efficiency", 0.7) * ideal
    timeline = results[0]["timeline"]
    details = {"speedup": {"measured": speedup, "ideal": ideal, "threshold": threshold,
                           "label": f"{ws} stages: {m} microbatches vs 1", "ratios": measured["ratios"],
                           "step_seconds": {"1": baseline, str(m): parallel}},
               "timeline": {**timeline, "speedup": {"measured": speedup, "ideal": ideal}}}
    bubble = "; ".join(f"{name} bubble {b['measured']:.0%} measured vs {b['formula']:.0%} formula"
                       for name, b in timeline["bubble"].items())
    summary = (f"{m} microbatches ran {speedup:.2f}x faster than 1 (ideal p*m/(m+p-1) = {ideal:.2f}x, pass line "
               f"{threshold:.2f}x; pairs {', '.join(f'{x:.2f}' for x in measured['ratios'])}); {bubble}")
    if speedup < threshold:
        failure = CheckFailed(
            f"{m} microbatches ran only {speedup:.2f}x faster than 1 microbatch (pass line {threshold:.2f}x, ideal "
            f"{ideal:.2f}x; step seconds 1 microbatch {[round(x, 3) for x in baseline]}, {m}: "
            f"{[round(x, 3) for x in parallel]})",
            "The stages do not overlap: give each rank only its stage, pass the microbatch count to the schedule, and "
            "keep per-step work (printing, .item() on every rank, evaluation) out of the training loop. On a busy "
            "machine, run the check again.")
        failure.details = details
        raise failure
    return summary, details


register(DistributedCheck(
    id="pipeline.train", functions=("main",), scenario=_pipeline_scenario(_train_scenario), judge=_judge_train,
    explain=_explain, measures_speed=True,
    defaults={"microbatches": 4, "batch_size": 64, "steps": 5, "pairs": 3, "images": 400, "judge_speed": True}))
