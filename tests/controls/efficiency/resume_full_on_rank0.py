"""Mistake: the full state (model and optimizer) gathered and written by rank 0 alone with torch.save. It resumes at
any world size, but every rank gathers the whole state and rank 0 holds and writes all of it: not sharded."""
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_training_state(model, optimizer, step, path):
    model_state, optimizer_state = get_state_dict(model, optimizer, options=FULL)
    if dist.get_rank() == 0:
        torch.save({"model": model_state, "optimizer": optimizer_state, "step": step}, path)
    dist.barrier()


def load_training_state(model, optimizer, path):
    state = torch.load(path, weights_only=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    return state["step"]
