"""Autograd glue: the fused implementations return (loss, gradient) from one pass; backward only
scales the saved gradient by the incoming scalar.

Saving the gradient instead of the softmax keeps exactly one (B, C, H, W) tensor alive between
forward and backward, in the input dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd.function import once_differentiable

# impl(differentiable_input, *other_inputs, need_grad=bool) -> (loss, gradient or None)
FusedLossImpl = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


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
        need_grad = bool(ctx.needs_input_grad[1])
        loss, grad = impl(x, *rest, need_grad=need_grad)
        ctx.num_rest = len(rest)
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return (None, _scaled(grad, grad_output)) + (None,) * ctx.num_rest


def fused_loss(impl: FusedLossImpl, x: torch.Tensor, *rest: Any) -> torch.Tensor:
    """Run ``impl`` under autograd when ``x`` needs a gradient, plainly otherwise."""
    if torch.is_grad_enabled() and x.requires_grad:
        return FusedLoss.apply(impl, x, *rest)
    loss, _ = impl(x, *rest, need_grad=False)
    return loss
