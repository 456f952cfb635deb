"""A forgery, not a solution: on import it replaces the course's rank parts with functions that answer at once.

Every answer has the right form and uses whatever this rank was sent (its own weights, its own
inputs), but no rank talks to another: the outputs that need the whole pipeline are canned.
Every pipeline check must fail on it.
"""
import math

import torch

import autograder.rank.parts.pipeline as parts


def build_stage(model, example_microbatch, device):
    return model


def make_schedule(stage, n_microbatches, loss_fn):
    return None


def train_step(schedule, optimizer, inputs, labels):
    return math.log(10)


def save_stage(stage, path):
    return None


def load_full_model(model, path):
    return model


def _last(ctx):
    return ctx.rank == ctx.world_size - 1


def _split(ctx, learner, inputs):
    state = inputs["model"]["state"]
    kids = inputs["children"]
    mine = kids[:1] if ctx.rank == 0 else kids[1:]
    params = {k: v for k, v in state.items() if k.split(".")[0] in mine and "running_" not in k
              and "num_batches" not in k}
    example = inputs["example"]
    out = torch.zeros(len(example) * inputs["microbatches"], 10) if _last(ctx) else None
    return {"is_stage": True, "type": "PipelineStage", "stage_index": ctx.rank, "num_stages": ctx.world_size,
            "params": params, "output": out}


def _schedule(ctx, learner, inputs):
    m = inputs["microbatches"]
    grads = {k: torch.zeros_like(v) for k, v in inputs["stage"]["state"].items()}
    losses = [[torch.tensor(math.log(10))] * m] * inputs["steps"] if _last(ctx) else None
    steps = [{"forwards": m, "backwards": m, "input_batches": []}] * inputs["steps"]
    return {"is_schedule": True, "losses": losses, "grads": grads,
            "seen": {"type": "ScheduleGPipe", "declared": m, "steps": steps}}


def _step(ctx, learner, inputs):
    n = len(inputs["images"])
    value = {"type": "float", "value": math.log(10)} if _last(ctx) else {"type": "NoneType", "value": None}
    return {"returned": [value] * n, "states": [inputs["stage"]["state"]] * n,
            "seen": {"optimizer_steps": list(range(1, n + 1)), "calls": [{}] * n}}


def _checkpoint(ctx, learner, inputs):
    if not _last(ctx):
        return {"seen": {"skipped": False, "collective_load": False}}
    state = dict(inputs["fresh"]["state"])
    state.update(inputs["stage"]["state"])
    return {"state": state, "seen": {"skipped": False, "collective_load": False, "saved_keys": sorted(state)}}


def _train(ctx, learner, inputs):
    from eurosat.model import EuroSATNet

    argv = inputs["argv"]
    k, steps = int(argv[argv.index("--microbatches") + 1]), int(argv[argv.index("--max-steps") + 1])
    seen = {"steps": [{"forwards": k, "n_microbatches": k}] * steps, "optimizer_steps": steps,
            "optimizer_scope": ["stage"]}
    if not _last(ctx):
        return {"losses": None, "val_accuracy": None, "state": None, "seen": seen}
    torch.manual_seed(int(argv[argv.index("--seed") + 1]))
    state = {k: v.detach().clone() for k, v in EuroSATNet().state_dict().items()}
    return {"losses": [math.log(10)] * steps, "val_accuracy": 0.1, "state": state, "seen": seen}


parts.split, parts.schedule, parts.step, parts.checkpoint, parts.train = _split, _schedule, _step, _checkpoint, _train
parts.timeline = lambda ctx, learner, inputs: {}
