"""Run under `torchrun --nproc_per_node 2`: each rank normalises its half of one fixed batch with
fastforec's SyncBatchNorm2d and back-propagates a fixed upstream gradient; rank 0 writes both
ranks' outputs and gradients (torch.save) for test_sync_bn.py to compare with BatchNorm2d on the
whole batch."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from fastforec.models.sync_bn import SyncBatchNorm2d

BATCH, CHANNELS, SIZE = 4, 3, 5


def fixed_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.nn.BatchNorm2d]:
    """The whole batch, its upstream gradient and a BatchNorm2d with non-trivial state (shared
    with the test, which computes the reference from the same values)."""
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen)  # mean far from 0
    dy = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen)
    bn = torch.nn.BatchNorm2d(CHANNELS)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(CHANNELS, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(CHANNELS, generator=gen))
        bn.running_mean.copy_(torch.randn(CHANNELS, generator=gen))
        bn.running_var.copy_(torch.rand(CHANNELS, generator=gen) + 0.5)
    return x, dy, bn


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, dy, bn = fixed_inputs()
    bn.__class__ = SyncBatchNorm2d
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    xi = x[part].clone().requires_grad_(True)
    y = bn(xi)
    y.backward(dy[part])
    mine = {"y": y.detach(), "dx": xi.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        torch.save(gathered, sys.argv[1])
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
