"""PyTorch implementations that are efficient on the CPU: the same math as the Triton kernels,
run chunk by chunk.

Why chunks: the naive composition materialises several full (B, C, H, W) fp32 tensors
(softmax, log-softmax, its gradient, the target image, the squared error) and streams each
through memory. Here every intermediate lives only for one chunk, and the only full-size tensor
allocated is the gradient itself (fp32 log-probabilities are even computed straight into it).
The gradient is produced in the forward pass (the autograd wrapper scales it in backward), so
nothing else is saved for backward.

Chunk size: a fixed fraction of the call (``CHUNKS_PER_CALL``), not a cache-sized constant.
On an idle 2-core machine 2 MiB (L2-sized) chunks and whole-sample chunks measured the same,
but every op is an OpenMP parallel region ending in a barrier, and on a shared, oversubscribed
machine each barrier can wait for a descheduled thread: many small ops then cost several times
more than a few large ones (docs/bench_kernels.md). A fixed chunk count bounds that cost, and
1/8 of the tensor keeps the temporaries well under the naive composition's full-size ones.

Every function computes in fp32 whatever the input dtype (bf16/fp16 inputs are upcast chunk by
chunk, never as a whole).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

CHUNKS_PER_CALL = 8
# 4 MiB of fp32. Smaller chunks pay the per-op overhead (dispatch, OpenMP fork/join) more often
# than they gain in locality (masked_mse at B=8, 256x256, 1.5M values: 2**16-value chunks were
# 1.4x slower than 2**20), so small calls run in one or two pieces. Larger floors make mid-size
# chunks a bigger share of the call and, with bf16 inputs, their fp32 buffers outgrow the target
# of half the naive peak memory.
MIN_CHUNK_ELEMENTS = 2**20

Index = tuple[slice, slice]


def _chunks(batch: int, height: int, elements_per_row: int) -> Iterator[Index]:
    """(batch slice, row slice) pairs covering (B, H), each about 1/CHUNKS_PER_CALL of the data.

    Whole samples are grouped when one sample is smaller than a chunk (a batch slice of an
    NCHW tensor is contiguous); larger samples are split along rows.
    """
    per_sample = elements_per_row * height
    chunk = max(MIN_CHUNK_ELEMENTS, math.ceil(batch * per_sample / CHUNKS_PER_CALL))
    if per_sample <= chunk:
        step = max(1, chunk // per_sample)
        for b in range(0, batch, step):
            yield slice(b, b + step), slice(None)
        return
    rows = max(1, chunk // elements_per_row)
    for b in range(batch):
        for r in range(0, height, rows):
            yield slice(b, b + 1), slice(r, r + rows)


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
    for bs, rs in _chunks(batch, height, classes * width):
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


def pseudo_label_ce(logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                    conf_thresh: float, *, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, d loss / d logits or None).

    loss = sum_keep (logsumexp(x) - x[label]) / n_valid with keep = valid & (conf > thresh);
    gradient = (softmax(x) - onehot(label)) * keep / n_valid, from the same log-softmax chunk,
    which is computed straight into the gradient's memory when it is fp32 there.
    """
    batch, classes, height, width = logits.shape
    n_valid = torch.count_nonzero(valid)
    keep = (valid & (conf > conf_thresh)).to(torch.float32)
    weight = keep * n_valid.clamp_min(1).to(torch.float32).reciprocal() if need_grad else None
    grad = torch.empty_like(logits) if need_grad else None
    minus_one = torch.full((), -1.0, device=logits.device)
    partial_sums = []
    for bs, rs in _chunks(batch, height, classes * width):
        grad_chunk = None if grad is None else grad[bs, :, rs]
        log_prob, in_grad = _log_softmax_into(logits[bs, :, rs], grad_chunk)
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


def _log_softmax_into(logits: torch.Tensor, grad: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """(log_softmax over classes of one chunk in fp32, whether it lives in ``grad``).

    Written into ``grad`` when that is an fp32 NCHW-contiguous view (saves a buffer and a copy),
    else into a fresh buffer.
    """
    x = _fp32_nchw(logits)
    if grad is not None and grad.dtype == torch.float32 and grad.is_contiguous():
        return torch.log_softmax(x, dim=1, out=grad), True
    return torch.log_softmax(x, dim=1), False


def masked_mse(rec: torch.Tensor, image: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor, *,
               need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, d loss / d rec or None) of sum(mask * (rec - image * fg)^2) / (3 * sum(mask)).

    The masked difference d = mask * (rec - image * fg) is formed per chunk in one fp32 buffer
    (the gradient itself when that is fp32); the loss is d.d and the gradient is 2 d / (3 n),
    written over the same buffer. (Multiplying
    by the bool maps measured 5x faster than ``masked_fill_`` with a broadcast mask.)
    """
    batch, channels, height, width = rec.shape
    n_mask = torch.count_nonzero(mask)
    denom = (channels * n_mask).clamp_min(1)
    grad_scale = 2.0 / denom.to(torch.float32)
    grad = torch.empty_like(rec) if need_grad else None
    partial_sums = []
    for bs, rs in _chunks(batch, height, channels * width):
        image_chunk = image[bs, :, rs]
        grad_chunk = None if grad is None else grad[bs, :, rs]
        in_grad = grad_chunk is not None and grad_chunk.dtype == torch.float32 and grad_chunk.is_contiguous()
        # NCHW-contiguous (flattens without a copy) and never aliasing ``image``: the gradient's
        # own memory when it is fp32 there, else a fresh buffer.
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
