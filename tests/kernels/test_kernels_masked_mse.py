"""kernels.masked_mse against fastforec.losses.masked_mse_reference: values, gradients, empty
mask, layouts and dtypes of rec and image, input errors."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    BACKENDS,
    DTYPES,
    LOSS_TOL,
    SHAPES,
    Shape,
    force_chunk_elements,
    grad_tol,
    layout,
    loss_and_grad,
    pixel_rand,
)

import fastforec_kernels as kernels
from fastforec.losses import masked_mse_reference

RGB = 3


def inputs(shape: Shape, rec_dtype: torch.dtype, image_dtype: torch.dtype, seed: int, *,
           image_channels_last: bool | None = None) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    size = (shape.batch, RGB, shape.height, shape.width)
    rec = layout(torch.rand(size, generator=gen).to(rec_dtype), shape.channels_last)
    image_layout = shape.channels_last if image_channels_last is None else image_channels_last
    image = layout(torch.rand(size, generator=gen).to(image_dtype), image_layout)
    fg = pixel_rand(shape, seed + 1) < 0.5
    mask = pixel_rand(shape, seed + 2) < 0.7
    return rec, image, fg, mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_value_and_gradient_match_reference(backend: str, dtype: torch.dtype, shape: Shape) -> None:
    rec, image, fg, mask = inputs(shape, dtype, dtype, seed=shape.classes)
    before = [t.clone() for t in (rec, image, fg, mask)]
    loss, grad = loss_and_grad(lambda *a: kernels.masked_mse(*a, backend=backend), rec, image, fg, mask)
    assert all(torch.equal(a, b) for a, b in zip((rec, image, fg, mask), before))
    ref_loss, ref_grad = loss_and_grad(masked_mse_reference, rec, image, fg, mask)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and ref_loss > 0
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    assert grad.dtype == dtype and grad.is_contiguous(memory_format=torch.channels_last) == shape.channels_last
    torch.testing.assert_close(grad, ref_grad, **grad_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_and_layouts(backend: str) -> None:
    # bf16 reconstruction (autocast output) against an fp32 image in the other memory layout.
    shape = Shape(3, RGB, 7, 10, True)
    rec, image, fg, mask = inputs(shape, torch.bfloat16, torch.float32, seed=1, image_channels_last=False)
    loss, grad = loss_and_grad(lambda *a: kernels.masked_mse(*a, backend=backend), rec, image, fg, mask, scale=0.5)
    ref_loss, ref_grad = loss_and_grad(masked_mse_reference, rec, image, fg, mask, scale=0.5)
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    torch.testing.assert_close(grad, ref_grad, **grad_tol(torch.bfloat16))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_mask_gives_exact_zero(backend: str, dtype: torch.dtype) -> None:
    rec, image, fg, mask = inputs(Shape(3, RGB, 5, 9, False), dtype, dtype, seed=2)
    loss, grad = loss_and_grad(lambda *a: kernels.masked_mse(*a, backend=backend), rec, image, fg,
                               torch.zeros_like(mask))
    assert str(loss.item()) == "0.0"  # +0.0 exactly, as the reference
    assert torch.count_nonzero(grad) == 0 and not grad.isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_background_target_is_black(backend: str) -> None:
    # fg all False: the target is 0 everywhere, so the loss is the masked mean of rec^2.
    rec, image, fg, mask = inputs(Shape(1, RGB, 4, 6, False), torch.float32, torch.float32, seed=3)
    loss = kernels.masked_mse(rec, image, torch.zeros_like(fg), mask, backend=backend)
    expected = (rec.pow(2) * mask.unsqueeze(1)).sum() / (RGB * mask.sum())
    torch.testing.assert_close(loss, expected, **LOSS_TOL)


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float32, True), (torch.bfloat16, False)])
def test_torch_backend_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                        channels_last: bool) -> None:
    # fp32 NCHW runs in one piece inside the gradient; these layouts go through chunk buffers.
    rec, image, fg, mask = inputs(Shape(3, RGB, 10, 9, channels_last), dtype, dtype, seed=4)
    ref_loss, ref_grad = loss_and_grad(masked_mse_reference, rec, image, fg, mask)
    for chunk in (RGB * 9 * 4, RGB * 10 * 9 * 2):  # rows of one sample; two whole samples
        force_chunk_elements(monkeypatch, chunk)
        loss, grad = loss_and_grad(lambda *a: kernels.masked_mse(*a, backend="torch"), rec, image, fg, mask)
        torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
        torch.testing.assert_close(grad, ref_grad, **grad_tol(dtype))


def test_image_requiring_grad_is_rejected() -> None:
    rec, image, fg, mask = inputs(Shape(1, RGB, 4, 4, False), torch.float32, torch.float32, seed=6)
    with pytest.raises(ValueError, match=r"differentiable w.r.t. rec only.*image.detach\(\)"):
        kernels.masked_mse(rec, image.requires_grad_(), fg, mask, backend="torch")


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("rec", torch.zeros(2, 4, 4, 4), r"rec must be \(B, 3, H, W\)"),
    ("image", torch.zeros(2, 3, 4, 5), r"image must match rec"),
    ("fg", torch.zeros(2, 4, 4, dtype=torch.uint8), r"fg must be torch.bool"),
    ("mask", torch.ones(2, 5, 4, dtype=torch.bool), r"mask must be shape \(2, 4, 4\) to match rec"),
])
def test_bad_inputs_are_rejected(name: str, bad: torch.Tensor, message: str) -> None:
    args = {"rec": torch.zeros(2, 3, 4, 4), "image": torch.zeros(2, 3, 4, 4),
            "fg": torch.ones(2, 4, 4, dtype=torch.bool), "mask": torch.ones(2, 4, 4, dtype=torch.bool)}
    args[name] = bad
    with pytest.raises(ValueError, match=message):
        kernels.masked_mse(*args.values(), backend="torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_and_strided_views(backend: str) -> None:
    rec, image, fg, mask = inputs(Shape(5, RGB, 6, 14, False), torch.float32, torch.float32, seed=8)
    leaf = rec.clone().requires_grad_()
    view = (slice(2, None), slice(None), slice(None), slice(None, None, 2))
    maps = (slice(2, None), slice(None), slice(None, None, 2))
    loss = kernels.masked_mse(leaf[view], image[view], fg[maps], mask[maps], backend=backend)
    loss.backward()
    ref_loss, ref_grad = loss_and_grad(masked_mse_reference, rec[view].contiguous(), image[view], fg[maps],
                                       mask[maps])
    torch.testing.assert_close(loss.detach(), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(leaf.grad[view], ref_grad, **grad_tol(torch.float32))
    assert torch.count_nonzero(leaf.grad[:2]) == 0 and torch.count_nonzero(leaf.grad[2:, ..., 1::2]) == 0
