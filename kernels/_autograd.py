"""Autograd glue for the fused losses: when is the gradient written, and scaled by what.

A fused loss's gradient is ``raw * grad_output / count`` (``raw``: softmax - onehot, or the
masked difference; ``count``: valid pixels). Two schedules:

- **In forward** (fp32 and bf16 on the CPU): the implementation returns (loss, raw / count)
  from one pass and backward multiplies by ``grad_output``. On the CPU that multiplication is
  skipped when ``grad_output`` is exactly 1 (free to check there), so a call is one pass.
- **In backward** (fp16, and everything on CUDA): forward computes the loss only and backward
  runs the implementation again with ``grad_output``, which scales the fp32 value first and
  normalises it after, then stores it once. fp16 must: ``raw / count`` is below fp16's smallest
  subnormal for most pixels of a real batch (count = 2M at 8x512x512), and storing it before the
  loss scale multiplies it flushes ~80 % of the gradient to zero. On CUDA it is also less
  traffic: forward reads the inputs, backward reads them and writes the gradient (2 reads + 1
  write), against forward read + write and a backward read + write to scale (2 + 2), since
  checking ``grad_output == 1`` there would synchronise the host.

Either way exactly one (B, C, H, W) tensor stays alive between forward and backward: the
gradient, or the input it is recomputed from.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd.function import once_differentiable

# impl(differentiable_input, *other_inputs, need_grad=bool, grad_output=None | 0-d tensor)
#   -> (loss, gradient (already multiplied by grad_output when given) or None)
FusedLossImpl = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def gradient_in_backward(x: torch.Tensor) -> bool:
    """True when the gradient must be written in backward, knowing ``grad_output`` (see above)."""
    return x.dtype == torch.float16 or x.is_cuda


def _scaled(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    # A loss enters the total with weight 1 in most steps; on the CPU that is free to detect
    # (no device sync) and saves a full read+write pass over the gradient. The saved tensor is
    # still referenced by the graph, so autograd copies rather than steals it when accumulating.
    if not grad_output.is_cuda and grad_output.numel() == 1 and float(grad_output) == 1.0:
        return grad
    return grad * grad_output.to(grad.dtype)


class FusedLoss(torch.autograd.Function):
    """``FusedLoss.apply(impl, x, *rest)``: differentiable w.r.t. ``x`` only."""

    @staticmethod
    def forward(ctx: Any, impl: FusedLossImpl, x: torch.Tensor, *rest: Any) -> torch.Tensor:
        ctx.num_rest = len(rest)
        ctx.deferred = gradient_in_backward(x)
        if ctx.deferred:
            loss, _ = impl(x, *rest, need_grad=False)
            ctx.impl = impl
            # Tensors go through save_for_backward (version checks); plain values ride along.
            ctx.tensor_slots = [i for i, r in enumerate(rest) if isinstance(r, torch.Tensor)]
            ctx.plain = [r for r in rest if not isinstance(r, torch.Tensor)]
            ctx.save_for_backward(x, *(rest[i] for i in ctx.tensor_slots))
            return loss
        loss, grad = impl(x, *rest, need_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.deferred:
            x, *saved = ctx.saved_tensors
            tensors, plain = iter(saved), iter(ctx.plain)
            rest = [next(tensors) if i in ctx.tensor_slots else next(plain) for i in range(ctx.num_rest)]
            _, grad = ctx.impl(x, *rest, need_grad=True, grad_output=grad_output.float())
        else:
            (raw,) = ctx.saved_tensors
            grad = _scaled(raw, grad_output)
        return (None, grad) + (None,) * ctx.num_rest


def fused_loss(impl: FusedLossImpl, x: torch.Tensor, *rest: Any) -> torch.Tensor:
    """Run ``impl`` under autograd when ``x`` needs a gradient, plainly otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        return FusedLoss.apply(impl, x, *rest)
    loss, _ = impl(x, *rest, need_grad=False)
    return loss
