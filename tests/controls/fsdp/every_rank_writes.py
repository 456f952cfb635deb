"""Mistake: the full state dict is gathered correctly, but every rank writes it."""
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


def save_full_checkpoint(model, path):
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    torch.save(state, path)
