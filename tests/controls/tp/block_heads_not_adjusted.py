"""tp control: shard_block splits qkv into whole heads but leaves attn.heads at the full count."""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


class _CopyToParallelRegion(torch.autograd.Function):
    """Megatron's f: identity in forward, all-reduce (sum) of the gradient in backward.

    Every rank feeds the same x into its own slice of a column-parallel layer, so each rank's backward only yields
    its slice's contribution to dL/dx; the true dL/dx is the sum of them over the ranks."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)   # never reduce autograd's own buffer in place
        dist.all_reduce(grad)
        return grad


class _ReduceFromParallelRegion(torch.autograd.Function):
    """Megatron's g, f's conjugate: all-reduce (sum) in forward, identity in backward.

    Each rank's row-parallel slice gives a partial sum of the output; the all-reduce completes it. The output is
    then the same on every rank, and so is its gradient: each rank passes it straight to its own slice."""

    @staticmethod
    def forward(ctx, partial):
        total = partial.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad


def _my_features(size: int, what: str) -> slice:
    """This rank's contiguous slice of `size` features: rank r of N keeps [r * size/N, (r + 1) * size/N)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if size % world:
        raise ValueError(f"{what}: {size} features do not split evenly over {world} ranks")
    n = size // world
    return slice(rank * n, (rank + 1) * n)


class ColumnParallelLinear(nn.Module):
    """This rank's slice of `full`'s output features (rows of its weight, and of its bias). forward(x) takes the
    whole input and returns this rank's output features; backward all-reduces the input's gradient."""

    def __init__(self, full: nn.Linear):
        super().__init__()
        rows = _my_features(full.out_features, "ColumnParallelLinear's output")
        self.in_features, self.out_features = full.in_features, rows.stop - rows.start
        # Copies, not views: this rank's parameters hold its slice only, and the full layer can be freed.
        self.weight = nn.Parameter(full.weight.detach()[rows].clone())
        self.bias = nn.Parameter(full.bias.detach()[rows].clone()) if full.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_CopyToParallelRegion.apply(x), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """This rank's slice of `full`'s input features (columns of its weight). forward(x_local) takes this rank's
    input features and returns the whole output, all-reduced over the ranks, with the bias added once."""

    def __init__(self, full: nn.Linear):
        super().__init__()
        columns = _my_features(full.in_features, "RowParallelLinear's input")
        self.in_features, self.out_features = columns.stop - columns.start, full.out_features
        self.weight = nn.Parameter(full.weight.detach()[:, columns].clone())
        # The bias is not split: every rank keeps all of it and adds it after the sum, so it counts once.
        self.bias = nn.Parameter(full.bias.detach().clone()) if full.bias is not None else None

    def forward(self, x_local: torch.Tensor) -> torch.Tensor:
        out = _ReduceFromParallelRegion.apply(F.linear(x_local, self.weight))   # partial sums -> the full output
        return out if self.bias is None else out + self.bias


def shard_block(block: nn.Module) -> nn.Module:
    """Make one ViT Block tensor-parallel over the default process group with the layers above: attention's heads
    split over the ranks (qkv column-parallel, proj row-parallel), the MLP's fc1 column- and fc2 row-parallel, the
    layer norms replicated. Returns the block."""
    world = dist.get_world_size()
    attn, mlp = block.attn, block.mlp
    if attn.heads % world:
        raise ValueError(f"{attn.heads} heads do not split evenly over {world} ranks")
    # qkv's output features are head-major, so a contiguous slice of them is whole heads: q, k and v of heads/N
    # heads. Attention runs on them unchanged; proj takes exactly those heads' features as its input slice.
    attn.qkv = ColumnParallelLinear(attn.qkv)
    attn.proj = RowParallelLinear(attn.proj)
    # MISTAKE: attn.heads left at the full count: each rank's heads are cut in pieces
    # GELU acts on each feature alone, so fc1's output slice goes through it and into fc2's input slice with no
    # communication in between: one all-reduce per sub-block in forward (g), one in backward (f).
    mlp.fc1 = ColumnParallelLinear(mlp.fc1)
    mlp.fc2 = RowParallelLinear(mlp.fc2)
    return block


def parallelize_vit(model: nn.Module, tp_mesh: DeviceMesh) -> nn.Module:
    """Tensor-parallel ViT with DTensor: every block's qkv and fc1 colwise, proj and fc2 rowwise over `tp_mesh`,
    each attention left with its share of the heads. Returns the model."""
    # ColwiseParallel: weight Shard(0), input taken as Replicate (its gradient is all-reduced: f); RowwiseParallel:
    # weight Shard(1), bias Replicate, output all-reduced to Replicate (g). Both hand back plain local tensors
    # (use_local_output=True), so the attention code between them sees a tensor of heads/N heads.
    plan = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel(),
            "mlp.fc1": ColwiseParallel(), "mlp.fc2": RowwiseParallel()}
    for block in model.blocks:
        if block.attn.heads % tp_mesh.size():
            raise ValueError(f"{block.attn.heads} heads do not split evenly over {tp_mesh.size()} ranks")
        parallelize_module(block, tp_mesh, plan)
        block.attn.heads //= tp_mesh.size()
    return model


def parallelize_2d(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """2D parallelism on a 2-D mesh with dims ("dp", "tp"): tensor parallelism over mesh["tp"] inside each data
    parallel group, then FSDP over mesh["dp"] (every block, then the root). Returns the model."""
    # TP first: it turns the blocks' weights into DTensors on the "tp" mesh; fully_shard then shards those (and the
    # plain parameters) over "dp" as well, so each rank keeps about 1 / (dp x tp) of the blocks' weights.
    parallelize_vit(model, mesh["tp"])
    for block in model.blocks:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model
