"""05_pipeline (pipeline_parts.py, pipeline_train.py): stage split, schedule, training step, checkpoint, script.

What the checks share: secret models and data, the harness's own split of the model (so that
schedule, step and checkpoint test one function each, on stages the harness built), the
per-rank shares of the inputs, and the hints for errors raised inside torch.distributed.pipelining.

Every rank receives only its share: the blocks of its own stage (weights drawn from the
call's secret), the images on the first rank, the labels on the last rank. A value that
is right on the last rank therefore passed through every stage.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any

ARCH = {"kind": "eurosat", "width": 16}   # the course's EuroSATNet; blocks and norm vary per scenario


# ------------------------------------------------------------------ secret models and data

def secret_model(trial, salt: int, *, norm: bool, blocks: int = 3) -> tuple[dict, dict]:
    """(spec, state): a EuroSATNet whose weights, and BatchNorm statistics, come from the call's secret.

    The BatchNorm running statistics are drawn too (not left at 0 and 1), so that a checkpoint
    that loses them cannot pass for one that keeps them.
    """
    import torch

    from ...rank.toolkit import build_model, state_of

    spec = {**ARCH, "blocks": int(blocks), "norm": bool(norm)}
    with torch.random.fork_rng(devices=[]):        # the trusted process's own RNG is left as it was
        torch.manual_seed(trial.generator(salt).initial_seed())
        model = build_model(spec)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand_like(buffer))
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(int(torch.randint(1, 1000, ())))
    return spec, state_of(model)


def images(trial, n: int, salt: int):
    """n secret images of the real shape (3 x 64 x 64, values in [0, 1))."""
    import torch

    return torch.rand(n, 3, 64, 64, generator=trial.generator(salt))


def labels(trial, n: int, salt: int):
    import torch

    return torch.randint(0, 10, (n,), generator=trial.generator(salt))


def children(spec: dict) -> list[str]:
    """The model's top-level blocks in order: conv_block1 ... conv_blockN, head."""
    return [f"conv_block{i + 1}" for i in range(int(spec["blocks"]))] + ["head"]


def stage_units(names: list[str], world_size: int) -> list[list[str]]:
    """The harness's split of the top-level blocks into one run per stage (the head joins the last block's stage)."""
    cuttable = len(names) - 1 if world_size < len(names) else len(names)   # the head is not cut off when it can ride along
    if cuttable < world_size:
        raise ValueError(f"{world_size} stages, but the model has only {len(names)} blocks")
    starts = [s * cuttable // world_size for s in range(world_size)] + [len(names)]
    return [names[a:b] for a, b in zip(starts, starts[1:])]


def stage_shares(spec: dict, state: dict, world_size: int) -> list[dict]:
    """Per rank: the model's spec, the names of that rank's blocks, and only those blocks' weights."""
    shares = []
    for keep in stage_units(children(spec), world_size):
        mine = {k: v for k, v in state.items() if k.split(".")[0] in keep}
        shares.append({"model": spec, "keep": keep, "state": mine})
    return shares


def absent(t) -> dict:
    """What a rank that must not read `t` receives instead: its shape (the rank part makes zeros of it)."""
    return {"zeros": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


def first_and_last(world_size: int, first: Any, last: Any) -> list[dict]:
    """Per rank: {"images": ...} on rank 0, {"labels": ...} on the last rank, None elsewhere."""
    return [{"images": first if r == 0 else None, "labels": last if r == world_size - 1 else None}
            for r in range(world_size)]


# ------------------------------------------------------------------ comparisons

def relative_error(got, want) -> float:
    """max |got - want| / max |want|: one number per tensor pair, comparable across layers."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12))


def worst_error(got: dict, want: dict) -> tuple[float, str]:
    """The largest relative_error over the tensors of `want` (inf for a missing or misshapen one), and its name."""
    import torch

    worst, where = 0.0, ""
    for name, w in want.items():
        g = got.get(name) if isinstance(got, dict) else None
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(w.shape):
            return float("inf"), name
        err = relative_error(g, w)
        if not err <= worst:   # also catches nan
            worst, where = (err if err == err else float("inf")), name
    return worst, where


# ------------------------------------------------------------------ errors raised inside torch's pipelining

# The learner's code may cause these inside torch.distributed.pipelining; what they mean here.
KNOWN_ERRORS = (
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
    (("no longer defines load_data",),
     "Keep the given load_data(args) in pipeline_train.py: the check replaces it to give the script its own "
     "images."),
)


def explain(error: dict) -> str | None:
    text = f"{error['message']}\n{error.get('traceback', '')}"
    for needles, hint in KNOWN_ERRORS:
        if any(n in text for n in needles):
            return hint
    return None


# ------------------------------------------------------------------ results a rank may have forged

@contextmanager
def read_carefully():
    """A rank result of the wrong form (what a replaced rank part might send) fails the check.

    The ranks' results are the learner's processes' word: a missing key or a wrong type there
    is a failed check, not an error of the harness.
    """
    from ...verdict import CheckFailed

    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise CheckFailed(f"a rank returned a result the check cannot read ({type(exc).__name__}: {exc})",
                          "The ranks must run the course's rank driver unchanged: do not patch or replace "
                          "anything in the autograder package from your code.") from None


def readable(judge):
    """A judge that reads the ranks' results carefully (see read_carefully)."""
    @functools.wraps(judge)
    def judged(run):
        with read_carefully():
            return judge(run)
    return judged
