"""PyTorch implementations that are efficient on the CPU: the same math as the Triton kernels,
run chunk by chunk.

Why: the naive composition materialises several full (B, C, H, W) fp32 tensors (softmax,
log-softmax, its gradient, the target image, the squared error) and streams each through
memory. Here the only full-size tensor allocated is the gradient itself; when it is fp32 and
NCHW-contiguous the intermediates are computed inside it (log-probabilities, the masked
difference) and a call is a handful of whole-tensor ops. Otherwise (bf16/fp16 or channels-last)
the fp32 intermediates need buffers of their own, and the call is cut into ``CHUNKS_PER_CALL``
chunks so that those buffers stay a fraction of the gradient. The gradient is produced in the
forward pass (the autograd wrapper scales it in backward), so nothing else is saved for backward.

Why so few chunks (not L2-sized ones): every op is an OpenMP parallel region ending in a barrier,
and on a shared, oversubscribed CPU each barrier can wait a scheduler time slice for a
descheduled thread, so the cost of a call grows with its number of ops. 24 L2-sized chunks per
call measured up to 7x slower than the naive composition under load, while single-threaded,
whole-tensor ops and 2 MiB chunks measured within 20 % of each other (docs/benchmarks.md, fused kernels).

Every function computes in fp32 whatever the input dtype (bf16/fp16 inputs are upcast chunk by
chunk, never as a whole).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

# Buffers of 1/4 of the call: with bf16 inputs their fp32 copies and results stay well under the
# target of half the naive composition's peak memory.
CHUNKS_PER_CALL = 4
# 4 MiB of fp32. Smaller chunks pay the per-op overhead (dispatch, OpenMP fork/join) more often
# than they gain in locality (masked_mse at B=8, 256x256, 1.5M values: 2**16-value chunks were
# 1.4x slower than 2**20), so small calls run in one piece.
MIN_CHUNK_ELEMENTS = 2**20

Index = tuple[slice, slice]


def _chunks(batch: int, height: int, elements_per_row: int, *, pieces: int) -> Iterator[Index]:
    """(batch slice, row slice) pairs covering (B, H), each about 1/pieces of the data (and at
    least MIN_CHUNK_ELEMENTS).

    Whole samples are grouped when one sample is smaller than a chunk (a batch slice of an
    NCHW tensor is contiguous); larger samples are split along rows.
    """
    per_sample = elements_per_row * height
    chunk = max(MIN_CHUNK_ELEMENTS, math.ceil(batch * per_sample / pieces))
    if per_sample <= chunk:
        step = max(1, chunk // per_sample)
        for b in range(0, batch, step):
            yield slice(b, b + step), slice(None)
        return
    rows = max(1, chunk // elements_per_row)
    for b in range(batch):
        for r in range(0, height, rows):
            yield slice(b, b + 1), slice(r, r + rows)


def _holds_fp32_work(grad: torch.Tensor | None) -> bool:
    """The gradient can serve as the fp32 work buffer: then nothing else is allocated and the
    call runs in one piece."""
    return grad is not None and grad.dtype == torch.float32 and grad.is_contiguous()


def _fp32_nchw(t: torch.Tensor) -> torch.Tensor:
    # Softmax along dim 1 is several times faster on an NCHW-contiguous chunk than on a strided
    # or channels-last view, so the chunk is copied once (a no-op when it already is one).
    return t.to(torch.float32, memory_format=torch.contiguous_format)


def pseudo_label(logits: torch.Tensor, lut: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(argmax label int64, max softmax prob fp32, foreground bool), all (B, H, W).

    conf = max_c softmax = 1 / sum_c exp(x_c - max): no probability tensor is formed.
    ``torch.max`` along a dim returns the first maximal index, matching the reference ties.
    """
    batch, classes, height, width = logits.shape
    label = torch.empty((batch, height, width), dtype=torch.int64, device=logits.device)
    conf = torch.empty((batch, height, width), dtype=torch.float32, device=logits.device)
    for bs, rs in _chunks(batch, height, classes * width, pieces=CHUNKS_PER_CALL):
        chunk = logits[bs, :, rs]
        x = _fp32_nchw(chunk)
        # (B, H, W) slices of whole rows are contiguous: the results go straight to the outputs.
        top = torch.empty_like(conf[bs, rs])
        torch.max(x, dim=1, out=(top, label[bs, rs]))
        # x - top in place when x is already a private copy (never into the caller's logits).
        shifted = torch.sub(x, top.unsqueeze(1)) if x is chunk else x.sub_(top.unsqueeze(1))
        torch.sum(shifted.exp_(), dim=1, out=conf[bs, rs])
        conf[bs, rs].reciprocal_()
    fg = lut[label] if lut is not None else torch.zeros_like(label, dtype=torch.bool)
    return label, conf, fg


def _grad_weight(keep: torch.Tensor, count: torch.Tensor, grad_output: torch.Tensor | None) -> torch.Tensor:
    """Per-pixel fp32 factor of the gradient: keep * grad_output, then / count (scaled first,
    normalised after, as the Triton kernels do; see kernels/_autograd.py for why)."""
    scaled = keep if grad_output is None else keep * grad_output
    return scaled / count.clamp_min(1).to(torch.float32)


def pseudo_label_ce(logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                    conf_thresh: float, *, need_grad: bool, grad_output: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, d (grad_output * loss) / d logits or None).

    loss = sum_keep (logsumexp(x) - x[label]) / n_valid with keep = valid & (conf > thresh);
    gradient = (softmax(x) - onehot(label)) * keep * grad_output / n_valid (grad_output 1 when
    None), from the same log-softmax chunk (computed straight into the gradient's memory when it
    is fp32 NCHW).
    """
    batch, classes, height, width = logits.shape
    n_valid = torch.count_nonzero(valid)
    keep = (valid & (conf > conf_thresh)).to(torch.float32)
    weight = _grad_weight(keep, n_valid, grad_output) if need_grad else None
    grad = torch.empty_like(logits) if need_grad else None
    in_grad = _holds_fp32_work(grad)
    minus_one = torch.full((), -1.0, device=logits.device)
    partial_sums = []
    for bs, rs in _chunks(batch, height, classes * width, pieces=1 if in_grad else CHUNKS_PER_CALL):
        x = _fp32_nchw(logits[bs, :, rs])
        grad_chunk = None if grad is None else grad[bs, :, rs]
        log_prob = torch.log_softmax(x, dim=1, out=grad_chunk) if in_grad else torch.log_softmax(x, dim=1)
        target = label[bs, rs].unsqueeze(1)
        # sum(log p[label] * keep): a dot product, no per-pixel loss tensor.
        partial_sums.append(torch.dot(log_prob.gather(1, target).view(-1), keep[bs, rs].reshape(-1)))
        if grad_chunk is not None and weight is not None:
            # softmax - onehot, then the per-pixel weight; the -1 is a broadcast scalar, not a tensor.
            log_prob.exp_().scatter_add_(1, target, minus_one.expand(target.shape))
            log_prob.mul_(weight[bs, rs].unsqueeze(1))
            if not in_grad:
                grad_chunk.copy_(log_prob)
    # 0 - s rather than -s: +0.0 (not -0.0) when no pixel is kept, as the reference gives.
    loss = (0.0 - torch.stack(partial_sums).sum()) / n_valid.clamp_min(1)
    return loss, grad


def masked_mse(rec: torch.Tensor, image: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor, *,
               need_grad: bool, grad_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, d (grad_output * loss) / d rec or None) of sum(mask * (rec - image * fg)^2) / (3 * sum(mask)).

    The masked difference d = mask * (rec - image * fg) is formed per chunk in one fp32 buffer
    (the gradient itself when that is fp32 NCHW); the loss is d.d and the gradient is
    2 d grad_output / (3 n), written over the same buffer. (Multiplying by the bool maps measured
    5x faster than ``masked_fill_`` with a broadcast mask.)
    """
    batch, channels, height, width = rec.shape
    n_mask = torch.count_nonzero(mask)
    denom = (channels * n_mask).clamp_min(1)
    grad_scale = _grad_weight(torch.full((), 2.0, device=rec.device), denom, grad_output)
    grad = torch.empty_like(rec) if need_grad else None
    in_grad = _holds_fp32_work(grad)
    partial_sums = []
    for bs, rs in _chunks(batch, height, channels * width, pieces=1 if in_grad else CHUNKS_PER_CALL):
        image_chunk = image[bs, :, rs]
        grad_chunk = None if grad is None else grad[bs, :, rs]
        # NCHW-contiguous (flattens without a copy) and never aliasing ``image``.
        diff = grad_chunk if in_grad else torch.empty(image_chunk.shape, dtype=torch.float32, device=image.device)
        torch.mul(image_chunk, fg[bs, rs].unsqueeze(1), out=diff)
        torch.sub(rec[bs, :, rs], diff, out=diff)
        diff.mul_(mask[bs, rs].unsqueeze(1))
        flat = diff.view(-1)
        partial_sums.append(torch.dot(flat, flat))
        if grad_chunk is not None:
            diff.mul_(grad_scale)
            if not in_grad:
                grad_chunk.copy_(diff)
    loss = torch.stack(partial_sums).sum() / denom
    return loss, grad
