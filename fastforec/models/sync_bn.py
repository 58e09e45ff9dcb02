"""Synchronised BatchNorm without host synchronisation.

``torch.nn.SyncBatchNorm`` all-gathers every rank's (mean, invstd, count) and then drops the ranks
whose count is 0 with a boolean mask, a data-dependent shape: one device-to-host sync per BN layer
per forward pass (about 110 of them in a ResNet-101 step), which stalls the CPU's kernel queue
each time. In this trainer every rank always has the same, non-empty micro-batch (DALI batches
are full), so no rank needs dropping, and the statistics can be combined with one all-reduce of
sums instead:

    forward:  per channel, sum(x - s) and sum((x - s)^2) and the count, all-reduced; s is the
              running mean (identical on every rank), which keeps the variance's subtraction
              well conditioned; then y = (x - mean) * invstd * weight + bias
    backward: sum(dy) and sum(dy * (x - mean)), all-reduced; then the usual BatchNorm gradient
              over the global batch

Every reduction and the arithmetic run in fp32 whatever the input and parameter dtypes (16-bit
activations under autocast, 16-bit parameters under DeepSpeed's bf16/fp16 blocks), and the
output has the input's dtype. Running statistics are updated like BatchNorm's, with the unbiased
variance of the global batch. Parameters, buffers and state-dict keys are BatchNorm2d's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fastforec.precision import batch_norm_fp32_stats, bn_average_factor


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """(C,) shaped for broadcasting against an NCHW tensor."""
    return t.view(1, -1, 1, 1)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor, running_var: torch.Tensor, eps: float, momentum: float,
                group: Any) -> torch.Tensor:
        xf = x.float()
        shift = running_mean.detach().float().clone()  # the running mean is updated below
        centred = xf - _per_channel(shift)
        count = torch.full((1,), xf.numel() // xf.shape[1], dtype=torch.float32, device=x.device)
        stats = torch.cat([centred.sum((0, 2, 3)), centred.square().sum((0, 2, 3)), count])
        dist.all_reduce(stats, group=group)  # a collective on the device: no host sync
        channels = xf.shape[1]
        sum_c, sumsq_c, n = stats[:channels], stats[channels:2 * channels], stats[-1]
        mean_c = sum_c / n
        var = (sumsq_c / n - mean_c.square()).clamp_min(0.0)  # biased: what normalises the batch
        mean = shift + mean_c
        invstd = torch.rsqrt(var + eps)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = var * n / (n - 1).clamp_min(1.0)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        xhat = (xf - _per_channel(mean)) * _per_channel(invstd)
        wf = weight.float() if weight is not None else None
        y = xhat * _per_channel(wf) if wf is not None else xhat
        if bias is not None:
            y = y + _per_channel(bias.float())
        ctx.save_for_backward(x, weight, mean, invstd, n)
        ctx.group, ctx.bias_dtype = group, None if bias is None else bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        x, weight, mean, invstd, n = ctx.saved_tensors
        dyf = dy.float()
        xmu = x.float() - _per_channel(mean)
        local = torch.cat([dyf.sum((0, 2, 3)), (dyf * xmu).sum((0, 2, 3))])
        # this rank's own sums give the affine parameters' gradients (DDP/ZeRO average them across
        # ranks like every other gradient); the global ones give the input's
        channels = x.shape[1]
        grad_bias = local[:channels].clone() if ctx.bias_dtype is not None else None
        grad_weight = (local[channels:] * invstd).clone() if weight is not None else None
        dist.all_reduce(local, group=ctx.group)
        sum_dy, sum_dy_xmu = local[:channels], local[channels:]
        scale = invstd * weight.float() if weight is not None else invstd
        dx = (dyf - _per_channel(sum_dy / n) - xmu * _per_channel(invstd.square() * sum_dy_xmu / n)) \
            * _per_channel(scale)
        return (dx.to(x.dtype), None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(ctx.bias_dtype), None, None, None, None, None)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank of ``process_group`` (the world by
    default); in eval mode, or in a world of one, exactly BatchNorm2d with fp32 statistics."""

    process_group: Any = None
    # fewer ranks than this normalise with their own batch (BatchNorm2d); `bench --what gpu-check`
    # sets 1 to time the synchronised path on one GPU
    min_world_size: int = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = bn_average_factor(self)
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) >= self.min_world_size):
            return batch_norm_fp32_stats(self, x, factor)
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                                            factor, group)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Switch every BatchNorm2d of ``module`` (in place) to :class:`SyncBatchNorm2d`: a class swap,
    so parameters, buffers and state-dict keys are unchanged."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
    return module
