"""Triton kernels: one pass over the logits / images per call, gradient written in the same pass.

Imported lazily (first Triton call, see kernels/__init__.py): ``@triton.jit`` decides at
definition time whether a function is compiled or interpreted, so on the CPU
``TRITON_INTERPRET=1`` must already be in the environment when this module is imported.

Layout: each program owns ``BLOCK_P`` consecutive pixels of one sample (grid = (pixel blocks,
batch)) and loads a (classes x pixels) tile, so NCHW and channels-last inputs both work through
explicit strides. When rows are back to back in memory (every dense layout) the pixels are one
flat axis (``FLAT``), so NCHW loads are contiguous whatever the width; warps per program follow
the tile size. Per-program loss sums go to a small buffer summed by torch afterwards:
deterministic, unlike atomics. The normalisation (1 / number of valid pixels) is read from a
device scalar, so no call synchronises with the host.

Reductions go through ``tl.reduce`` with triton's own combine functions rather than
``tl.max``/``tl.sum``/``tl.argmax``/``tl.zeros``: those wrappers are ``@triton.jit`` functions
created when ``triton`` is first imported, and if that happened before ``TRITON_INTERPRET`` was
set (deepspeed imports triton) the interpreter refuses to call them. The combine functions are
only passed, never called, and the interpreter recognises them and reduces with numpy (a
user-defined combine function is applied element by element in Python: 100x slower).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import INTERPRET_ENV, interpreter_requested

# Decided once: the @triton.jit functions below are interpreted iff this was true at import.
INTERPRETED = interpreter_requested()

# Values in one program's (classes x pixels) tile of the logits: large enough to keep a GPU's
# loads wide, small enough to stay in registers.
TILE_ELEMENTS = 4096
MIN_BLOCK_PIXELS = 16
MAX_BLOCK_PIXELS = 256
# Above this the tile no longer fits in registers; semantic segmentation stays far below.
MAX_CLASSES = 1024
# masked_mse touches 3 channels per pixel, so a program takes many pixels.
MSE_BLOCK_PIXELS = 1024
# Warps per program from the tile size: about this many fp32 tile values per thread keeps a tile
# in registers (a 32 x 128 tile at 4 warps needed 121-128 registers per thread).
VALUES_PER_THREAD = 16
# masked_mse holds no tile: 8 pixels per thread and channel load is one 16-byte bf16 vector.
MSE_VALUES_PER_THREAD = 8
THREADS_PER_WARP = 32
MIN_WARPS, MAX_WARPS = 1, 8


@triton.jit
def _argmax_combine_fallback(value_a, index_a, value_b, index_b):
    # Ties go to the lower class index, as torch.argmax / torch.max do.
    take_b = (value_b > value_a) | ((value_b == value_a) & (index_b < index_a))
    return tl.where(take_b, value_b, value_a), tl.where(take_b, index_b, index_a)


@triton.jit
def _max_combine_fallback(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine_fallback(a, b):
    return tl.minimum(a, b)


@triton.jit
def _add_combine_fallback(a, b):
    return a + b


# triton's combine functions (see the module docstring); ours only if a release renames them.
_ARGMAX_COMBINE = getattr(tl.standard, "_argmax_combine_tie_break_left", _argmax_combine_fallback)
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _max_combine_fallback)
_MIN_COMBINE = getattr(tl.standard, "_elementwise_min", _min_combine_fallback)
_ADD_COMBINE = getattr(tl.standard, "_sum_combine", _add_combine_fallback)


@triton.jit
def _pixel_offsets(batch, pixel, width, stride_b, stride_h, stride_w, FLAT: tl.constexpr):
    # int64 so that offsets of large batches (B*C*H*W > 2**31) do not wrap.
    if FLAT:
        # Rows follow each other in memory (stride_h == width * stride_w: NCHW, channels-last,
        # column-strided views): one flat pixel axis. With stride_w == 1 (specialised by Triton)
        # the compiler sees BLOCK_P consecutive addresses and vectorises for any width, where the
        # (pixel // width, pixel % width) split hides contiguity unless width is a multiple of 16.
        return batch * stride_b + pixel.to(tl.int64) * stride_w
    h = (pixel // width).to(tl.int64)
    w = (pixel % width).to(tl.int64)
    return batch * stride_b + h * stride_h + w * stride_w


@triton.jit
def _load_logits_tile(ptr, batch, pixel, pixel_ok, cls, cls_ok, width, stride_b, stride_c, stride_h,
                      stride_w, FLAT: tl.constexpr):
    """(BLOCK_C, BLOCK_P) fp32 tile; padding classes are -inf so they never win nor add to exp-sums.

    Loaded in the input dtype and cast at once: bf16 arithmetic is wrong in the interpreter and
    fp32 accumulation is the contract anyway.
    """
    offsets = cls.to(tl.int64)[:, None] * stride_c + _pixel_offsets(batch, pixel, width, stride_b, stride_h,
                                                                     stride_w, FLAT)[None, :]
    x = tl.load(ptr + offsets, mask=cls_ok[:, None] & pixel_ok[None, :], other=0.0).to(tl.float32)
    return tl.where(cls_ok[:, None], x, float("-inf"))


@triton.jit
def _pseudo_label_kernel(logits_ptr, label_ptr, conf_ptr, fg_ptr, lut_ptr,
                         num_classes, num_pixels, width,
                         stride_b, stride_c, stride_h, stride_w,
                         HAS_FG: tl.constexpr, FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    batch = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixel < num_pixels
    cls = tl.arange(0, BLOCK_C)
    x = _load_logits_tile(logits_ptr, batch, pixel, pixel_ok, cls, cls < num_classes, width,
                          stride_b, stride_c, stride_h, stride_w, FLAT)
    cls_tile = cls[:, None] + tl.full((BLOCK_C, BLOCK_P), 0, tl.int32)
    top, label = tl.reduce((x, cls_tile), 0, _ARGMAX_COMBINE)
    # NaN compares false both ways, so the argmax of a pixel with a NaN logit can end on any
    # class, padding included (past the class table). torch.argmax counts NaN as the maximum:
    # the first NaN class wins, and conf below is NaN too (the step is then skipped as non-finite).
    first_nan = tl.reduce(tl.where(x != x, cls_tile, BLOCK_C), 0, _MIN_COMBINE)
    label = tl.where(first_nan < BLOCK_C, first_nan, label)
    # max softmax = exp(top - top) / sum exp(x - top): no probability tile is needed.
    denom = tl.reduce(tl.exp(x - top[None, :]), 0, _ADD_COMBINE)
    out = batch * num_pixels + pixel
    tl.store(label_ptr + out, label.to(tl.int64), mask=pixel_ok)
    tl.store(conf_ptr + out, 1.0 / denom, mask=pixel_ok)
    if HAS_FG:
        # the class test keeps the table read in bounds whatever the label
        fg = tl.load(lut_ptr + label, mask=pixel_ok & (label < num_classes), other=0)
        tl.store(fg_ptr + out, fg, mask=pixel_ok)


@triton.jit
def _pseudo_label_ce_kernel(logits_ptr, label_ptr, conf_ptr, valid_ptr, grad_ptr, partial_ptr, scales_ptr,
                            conf_thresh, num_classes, num_pixels, width,
                            stride_b, stride_c, stride_h, stride_w,
                            grad_stride_b, grad_stride_c, grad_stride_h, grad_stride_w,
                            WRITE_GRAD: tl.constexpr, FLAT: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_P: tl.constexpr):
    batch = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixel < num_pixels
    cls = tl.arange(0, BLOCK_C)
    cls_ok = cls < num_classes
    x = _load_logits_tile(logits_ptr, batch, pixel, pixel_ok, cls, cls_ok, width,
                          stride_b, stride_c, stride_h, stride_w, FLAT)
    maps = batch * num_pixels + pixel
    target = tl.load(label_ptr + maps, mask=pixel_ok, other=0)
    conf = tl.load(conf_ptr + maps, mask=pixel_ok, other=0.0)
    valid = tl.load(valid_ptr + maps, mask=pixel_ok, other=0) != 0
    keep = valid & (conf > conf_thresh) & pixel_ok

    top = tl.reduce(x, 0, _MAX_COMBINE)
    shifted = tl.exp(x - top[None, :])
    sum_exp = tl.reduce(shifted, 0, _ADD_COMBINE)
    # A label outside [0, C) matches no class (no out-of-bounds read); the CPU path rejects it.
    is_target = cls[:, None] == target[None, :].to(tl.int32)
    target_logit = tl.reduce(tl.where(is_target, x, 0.0), 0, _ADD_COMBINE)
    ce = tl.where(keep, top + tl.log(sum_exp) - target_logit, 0.0)
    tl.store(partial_ptr + batch * tl.num_programs(0) + tl.program_id(0), tl.reduce(ce, 0, _ADD_COMBINE))

    if WRITE_GRAD:
        # scales = (grad_output, 1 / n_valid): scale first, normalise after, all in fp32, and
        # store once (an fp16 store of the unscaled value would underflow; kernels/_autograd.py).
        weight = tl.where(keep, tl.load(scales_ptr), 0.0)
        grad = (shifted / sum_exp[None, :] - is_target.to(tl.float32)) * weight[None, :] * tl.load(scales_ptr + 1)
        offsets = cls.to(tl.int64)[:, None] * grad_stride_c + _pixel_offsets(
            batch, pixel, width, grad_stride_b, grad_stride_h, grad_stride_w, FLAT)[None, :]
        tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=cls_ok[:, None] & pixel_ok[None, :])


@triton.jit
def _masked_mse_kernel(rec_ptr, image_ptr, fg_ptr, mask_ptr, grad_ptr, partial_ptr, scales_ptr,
                       num_pixels, width,
                       rec_stride_b, rec_stride_c, rec_stride_h, rec_stride_w,
                       image_stride_b, image_stride_c, image_stride_h, image_stride_w,
                       grad_stride_b, grad_stride_c, grad_stride_h, grad_stride_w,
                       NUM_CHANNELS: tl.constexpr, WRITE_GRAD: tl.constexpr, FLAT: tl.constexpr,
                       BLOCK_P: tl.constexpr):
    batch = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_ok = pixel < num_pixels
    maps = batch * num_pixels + pixel
    keep = (tl.load(mask_ptr + maps, mask=pixel_ok, other=0) != 0) & pixel_ok
    is_fg = tl.load(fg_ptr + maps, mask=pixel_ok, other=0) != 0
    rec_px = _pixel_offsets(batch, pixel, width, rec_stride_b, rec_stride_h, rec_stride_w, FLAT)
    image_px = _pixel_offsets(batch, pixel, width, image_stride_b, image_stride_h, image_stride_w, FLAT)
    grad_px = _pixel_offsets(batch, pixel, width, grad_stride_b, grad_stride_h, grad_stride_w, FLAT)
    # scales = (2 * grad_output, 1 / (3 * n_mask)): applied in that order (see the CE kernel)
    grad_output = tl.load(scales_ptr)
    inv_count = tl.load(scales_ptr + 1)
    squares = tl.full((BLOCK_P,), 0.0, tl.float32)
    for ch in tl.static_range(NUM_CHANNELS):
        rec = tl.load(rec_ptr + rec_px + ch * rec_stride_c, mask=pixel_ok, other=0.0).to(tl.float32)
        image = tl.load(image_ptr + image_px + ch * image_stride_c, mask=keep & is_fg, other=0.0).to(tl.float32)
        # The target image * fg is never stored: `other=0` above already is the masked target.
        diff = tl.where(keep, rec - image, 0.0)
        squares += diff * diff
        if WRITE_GRAD:
            tl.store(grad_ptr + grad_px + ch * grad_stride_c,
                     (diff * grad_output * inv_count).to(grad_ptr.dtype.element_ty), mask=pixel_ok)
    tl.store(partial_ptr + batch * tl.num_programs(0) + tl.program_id(0), tl.reduce(squares, 0, _ADD_COMBINE))


# ---------------------------------------------------------------------------------------------
# Launchers


def _check_runnable(tensor: torch.Tensor) -> None:
    if not tensor.is_cuda and not INTERPRETED:
        raise RuntimeError(f"kernels: the Triton kernels were loaded without {INTERPRET_ENV}=1, so they run on "
                           f"CUDA only, got {tensor.device} tensors; set {INTERPRET_ENV}=1 before the first "
                           "Triton call or use backend 'torch'")
    if not tensor.is_cuda and not interpreter_requested():
        raise RuntimeError(f"kernels: the Triton kernels were loaded in interpreter mode and {INTERPRET_ENV} has "
                           "since been unset; keep it set for CPU Triton calls or use backend 'torch'")


def _class_blocks(num_classes: int, num_pixels: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): all classes of a pixel in one program, pixels to fill the tile (never
    more than an image has, so small images do not run mostly-masked programs)."""
    if num_classes > MAX_CLASSES:
        raise ValueError(f"kernels: the Triton kernels support up to {MAX_CLASSES} classes, got {num_classes}; "
                         "use backend 'torch'")
    block_c = triton.next_power_of_2(num_classes)
    block_p = max(MIN_BLOCK_PIXELS, min(MAX_BLOCK_PIXELS, TILE_ELEMENTS // block_c,
                                        triton.next_power_of_2(num_pixels)))
    return block_c, block_p


def _num_warps(tile_values: int, per_thread: int = VALUES_PER_THREAD) -> int:
    warps = triton.next_power_of_2(max(1, tile_values // (per_thread * THREADS_PER_WARP)))
    return max(MIN_WARPS, min(MAX_WARPS, warps))


def _flat(*tensors: torch.Tensor) -> bool:
    """Every (B, C, H, W) tensor has its rows back to back (stride_h == W * stride_w): pixels
    can then be addressed as one flat axis (see _pixel_offsets)."""
    return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in tensors)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    # bool tensors go in as uint8 (same storage): byte loads behave alike in the compiler and
    # the interpreter.
    return t.contiguous().view(torch.uint8)


def pseudo_label(logits: torch.Tensor, lut: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_runnable(logits)
    batch, classes, height, width = logits.shape
    block_c, block_p = _class_blocks(classes, height * width)
    label = torch.empty((batch, height, width), dtype=torch.int64, device=logits.device)
    conf = torch.empty((batch, height, width), dtype=torch.float32, device=logits.device)
    # Without foreground classes the kernel never writes fg, so it starts as zeros.
    fg_alloc = torch.empty if lut is not None else torch.zeros
    fg = fg_alloc((batch, height, width), dtype=torch.bool, device=logits.device)
    grid = (triton.cdiv(height * width, block_p), batch)
    lut_bytes = _as_bytes(lut) if lut is not None else fg.view(torch.uint8)  # unused without fg
    _pseudo_label_kernel[grid](logits, label, conf, fg.view(torch.uint8), lut_bytes,
                               classes, height * width, width, *logits.stride(),
                               HAS_FG=lut is not None, FLAT=_flat(logits), BLOCK_C=block_c, BLOCK_P=block_p,
                               num_warps=_num_warps(block_c * block_p))
    return label, conf, fg


def _scales(grad_output: torch.Tensor | None, factor: float, count: torch.Tensor) -> torch.Tensor:
    """(factor * grad_output, 1 / count) as a 2-element fp32 device tensor: no host sync."""
    g = torch.ones((), device=count.device) if grad_output is None else grad_output.reshape(())
    return torch.stack([g.float() * factor, count.clamp_min(1).to(torch.float32).reciprocal()])


def pseudo_label_ce(logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                    conf_thresh: float, *, need_grad: bool, grad_output: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_runnable(logits)
    batch, classes, height, width = logits.shape
    block_c, block_p = _class_blocks(classes, height * width)
    n_valid = torch.count_nonzero(valid)
    scale = _scales(grad_output, 1.0, n_valid)
    blocks = triton.cdiv(height * width, block_p)
    partial = torch.empty(batch * blocks, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if need_grad else None
    grad_arg = grad if grad is not None else partial  # never written when WRITE_GRAD is False
    grad_strides = grad.stride() if grad is not None else (0, 0, 0, 0)
    _pseudo_label_ce_kernel[(blocks, batch)](
        logits, label.contiguous(), conf.contiguous(), _as_bytes(valid), grad_arg, partial, scale,
        float(conf_thresh), classes, height * width, width, *logits.stride(), *grad_strides,
        WRITE_GRAD=need_grad, FLAT=_flat(logits, *([grad] if grad is not None else [])), BLOCK_C=block_c,
        BLOCK_P=block_p, num_warps=_num_warps(block_c * block_p))
    return partial.sum() / n_valid.clamp_min(1), grad


def masked_mse(rec: torch.Tensor, image: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor, *,
               need_grad: bool, grad_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_runnable(rec)
    batch, channels, height, width = rec.shape
    denom = (channels * torch.count_nonzero(mask)).clamp_min(1)
    grad_scale = _scales(grad_output, 2.0, denom)
    block_p = min(MSE_BLOCK_PIXELS, max(MIN_BLOCK_PIXELS, triton.next_power_of_2(height * width)))
    blocks = triton.cdiv(height * width, block_p)
    partial = torch.empty(batch * blocks, dtype=torch.float32, device=rec.device)
    grad = torch.empty_like(rec) if need_grad else None
    grad_arg = grad if grad is not None else partial
    grad_strides = grad.stride() if grad is not None else (0, 0, 0, 0)
    _masked_mse_kernel[(blocks, batch)](
        rec, image, _as_bytes(fg), _as_bytes(mask), grad_arg, partial, grad_scale,
        height * width, width, *rec.stride(), *image.stride(), *grad_strides,
        NUM_CHANNELS=channels, WRITE_GRAD=need_grad, FLAT=_flat(rec, image, *([grad] if grad is not None else [])),
        BLOCK_P=block_p, num_warps=_num_warps(block_p, MSE_VALUES_PER_THREAD))
    return partial.sum() / denom, grad
