"""FSDP2 for the EuroSAT CNN: shard every block, then the root; save one full, unsharded checkpoint."""
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_model(model: nn.Module, mesh: DeviceMesh | None = None, **fsdp_kwargs) -> nn.Module:
    """Apply fully_shard to each of model.blocks(), then to the model itself; return the model.

    mesh: the 1-D device mesh to shard over; None builds one over all ranks, on the GPUs
    if CUDA is available, else on the CPU. fsdp_kwargs (e.g. reshard_after_forward) go to
    every fully_shard call.
    """
    ### BEGIN SOLUTION
    if mesh is None:
        # fully_shard would build a CUDA mesh by default, even on a CPU-only run: be explicit.
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    # Inner units first: each block gathers its own parameters just before it runs and frees
    # them after, so at most one block is unsharded at a time.
    for block in model.blocks():
        fully_shard(block, mesh=mesh, **fsdp_kwargs)
    # The root unit owns whatever is left and drives the schedule (the first all-gather,
    # the wait for the last reduce-scatter).
    fully_shard(model, mesh=mesh, **fsdp_kwargs)
    return model
    ### END SOLUTION


def save_full_checkpoint(model: nn.Module, path: str) -> None:
    """Write the full, unsharded state dict of an FSDP model to `path`, once (rank 0).

    Every rank must call this: gathering the shards is a collective.
    """
    ### BEGIN SOLUTION
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # plain tensors on rank 0, {} elsewhere
    if dist.get_rank() == 0:
        torch.save(state, path)
    dist.barrier()  # nobody reads the file before it is complete
    ### END SOLUTION
