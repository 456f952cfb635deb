"""Pipeline-parallel pieces for pipeline_train.py: stage, schedule, one training step, checkpoints."""
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline


def build_stage(model, example_microbatch, device):
    """This rank's stage of `model`: the model cut between blocks into one stage per rank."""
    ### BEGIN SOLUTION
    rank, world_size = dist.get_rank(), dist.get_world_size()
    names = [name for name, _ in model.named_children()]   # conv_block1 ... conv_blockN, head
    # The head is tiny: it joins the last block's stage, unless it must be a stage of its own.
    units = names[:-1] if world_size < len(names) else names
    if world_size > len(units):
        raise ValueError(f"{world_size} stages, but the model has only {len(names)} blocks to split")
    # Stage s begins at unit s * len(units) // world_size; with 3 blocks on 2 ranks:
    # [conv_block1] | [conv_block2, conv_block3, head]. conv_block1 works on the largest
    # images, so it costs about as much as the next two blocks together.
    split_spec = {units[s * len(units) // world_size]: SplitPoint.BEGINNING for s in range(1, world_size)}
    # The tracer runs the example through the model to record the shapes that stages send each
    # other: it must be one real microbatch, (batch_size // n_microbatches, 3, 64, 64).
    pipe = pipeline(model, mb_args=(example_microbatch,), split_spec=split_spec)
    return pipe.build_stage(rank, torch.device(device))
    ### END SOLUTION


def make_schedule(stage, n_microbatches, loss_fn):
    """A schedule that runs each batch as `n_microbatches` microbatches, with `loss_fn` on the last stage."""
    ### BEGIN SOLUTION
    # GPipe: all forwards (fill), then all backwards (drain). Schedule1F1B has the same bubble and
    # keeps fewer activations alive, but needs n_microbatches >= stages (the 1-microbatch baseline
    # of pipeline_train.py has fewer).
    return ScheduleGPipe(stage, n_microbatches=n_microbatches, loss_fn=loss_fn)
    ### END SOLUTION


def train_step(schedule, optimizer, inputs, labels):
    """One optimizer step on one batch; the batch's mean loss on the last rank, None on the others."""
    ### BEGIN SOLUTION
    rank, world_size = dist.get_rank(), dist.get_world_size()
    is_first, is_last = rank == 0, rank == world_size - 1
    optimizer.zero_grad(set_to_none=True)     # schedules add into .grad and never clear it
    args = (inputs,) if is_first else ()      # only the first stage reads the images
    losses = []
    if is_last:                               # only the last stage sees the labels and the loss
        schedule.step(*args, target=labels, losses=losses)
    else:
        schedule.step(*args)
    optimizer.step()                          # once per batch, after every microbatch's backward
    # One mean loss per microbatch; with equal microbatches their mean is the batch's mean loss.
    return torch.stack(losses).mean().item() if is_last else None
    ### END SOLUTION


def save_stage(stage, path):
    """Write this rank's stage into the checkpoint folder `path`; every rank calls it."""
    ### BEGIN SOLUTION
    # dcp.save is collective: each rank writes its own tensors (keys keep the full model's
    # names, conv_block3.0.weight), rank 0 writes the metadata that ties them together.
    dcp.save(stage.submod.state_dict(), checkpoint_id=path)
    ### END SOLUTION


def load_full_model(model, path):
    """Load every stage's tensors from the checkpoint into the whole `model`, in one process; return it."""
    ### BEGIN SOLUTION
    state = model.state_dict()                # the keys and shapes to fill
    with warnings.catch_warnings():           # DCP warns that it loads in a single process: that is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state)              # strict: every key of the whole model must be there
    return model
    ### END SOLUTION
