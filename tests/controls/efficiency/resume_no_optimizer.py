"""Mistake: only the model and the step are saved: the resumed Adam starts without its moments."""
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict


def save_training_state(model, optimizer, step, path):
    dcp.save({"model": get_model_state_dict(model), "step": step}, checkpoint_id=path)


def load_training_state(model, optimizer, path):
    state = {"model": get_model_state_dict(model), "step": 0}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    return state["step"]
