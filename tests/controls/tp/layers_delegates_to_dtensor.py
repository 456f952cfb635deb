"""tp control: ColumnParallelLinear and RowParallelLinear hand the work to DTensor instead of autograd Functions."""
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor


class ColumnParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear):
        super().__init__()
        self.mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        self.weight = nn.Parameter(distribute_tensor(full.weight.detach(), self.mesh, [Shard(0)]))
        self.bias = nn.Parameter(distribute_tensor(full.bias.detach(), self.mesh, [Shard(0)]))

    def forward(self, x):
        x = distribute_tensor(x, self.mesh, [Replicate()])
        return (x @ self.weight.T + self.bias).to_local()


class RowParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear):
        super().__init__()
        self.mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        self.weight = nn.Parameter(distribute_tensor(full.weight.detach(), self.mesh, [Shard(1)]))
        self.bias = nn.Parameter(full.bias.detach().clone())

    def forward(self, x_local):
        return (x_local @ self.weight.to_local().T) + self.bias


def shard_block(block):
    raise NotImplementedError


def parallelize_vit(model, tp_mesh):
    raise NotImplementedError


def parallelize_2d(model, mesh):
    raise NotImplementedError
