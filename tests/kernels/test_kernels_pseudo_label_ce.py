"""kernels.pseudo_label_ce against fastforec.losses.pseudo_label_ce_reference: values, gradients,
empty cases, autograd plumbing, input errors."""

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
    logits,
    loss_and_grad,
    needs_triton,
    pixel_rand,
)

import fastforec_kernels as kernels
from fastforec.losses import pseudo_label_ce_reference, pseudo_label_reference

THRESH = 0.4
VALID_FRACTION = 0.8


def inputs(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    student = logits(shape, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    label = torch.randint(0, shape.classes, (shape.batch, shape.height, shape.width), generator=gen)
    conf = pixel_rand(shape, seed + 2)
    valid = pixel_rand(shape, seed + 3) < VALID_FRACTION
    return student, label, conf, valid


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_value_and_gradient_match_reference(backend: str, dtype: torch.dtype, shape: Shape) -> None:
    student, label, conf, valid = inputs(shape, dtype, seed=shape.classes)
    before = [t.clone() for t in (student, label, conf, valid)]
    loss, grad = loss_and_grad(lambda *a: kernels.pseudo_label_ce(*a, backend=backend),
                               student, label, conf, valid, THRESH)
    assert all(torch.equal(a, b) for a, b in zip((student, label, conf, valid), before))
    ref_loss, ref_grad = loss_and_grad(pseudo_label_ce_reference, student, label, conf, valid, THRESH)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and ref_loss > 0
    torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
    assert grad.dtype == dtype and grad.shape == student.shape
    assert grad.is_contiguous(memory_format=torch.channels_last) == shape.channels_last
    torch.testing.assert_close(grad, ref_grad, **grad_tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["all_invalid", "all_below_threshold"])
def test_empty_selection_gives_exact_zero(backend: str, dtype: torch.dtype, case: str) -> None:
    shape = Shape(3, 21, 7, 9, False)
    student, label, conf, valid = inputs(shape, dtype, seed=1)
    if case == "all_invalid":
        valid = torch.zeros_like(valid)
    else:
        conf = torch.full_like(conf, THRESH)  # conf > thresh is strict
    loss, grad = loss_and_grad(lambda *a: kernels.pseudo_label_ce(*a, backend=backend),
                               student, label, conf, valid, THRESH)
    assert str(loss.item()) == "0.0"  # +0.0 exactly, as the reference
    assert torch.count_nonzero(grad) == 0 and not grad.isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scales_the_gradient(backend: str) -> None:
    student, label, conf, valid = inputs(Shape(3, 21, 5, 6, True), torch.float32, seed=2)
    rest = (label, conf, valid, THRESH)
    _, grad = loss_and_grad(lambda *a: kernels.pseudo_label_ce(*a, backend=backend), student, *rest, scale=-2.5)
    _, ref = loss_and_grad(pseudo_label_ce_reference, student, *rest, scale=-2.5)
    torch.testing.assert_close(grad, ref, **grad_tol(torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_retained_graph_accumulates_twice(backend: str) -> None:
    student, label, conf, valid = inputs(Shape(1, 21, 5, 6, False), torch.float32, seed=3)
    x = student.clone().requires_grad_()
    loss = kernels.pseudo_label_ce(x, label, conf, valid, THRESH, backend=backend)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    _, ref = loss_and_grad(pseudo_label_ce_reference, student, label, conf, valid, THRESH)
    torch.testing.assert_close(first, ref, **grad_tol(torch.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_grad_gives_the_same_value(backend: str) -> None:
    student, label, conf, valid = inputs(Shape(3, 19, 4, 5, False), torch.float32, seed=4)
    with torch.no_grad():
        loss = kernels.pseudo_label_ce(student.requires_grad_(), label, conf, valid, THRESH, backend=backend)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, pseudo_label_ce_reference(student, label, conf, valid, THRESH).detach(),
                               **LOSS_TOL)


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float32, True), (torch.bfloat16, False)])
def test_torch_backend_chunk_boundaries(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                        channels_last: bool) -> None:
    # fp32 NCHW runs in one piece inside the gradient; these layouts go through chunk buffers.
    shape = Shape(3, 21, 10, 9, channels_last)
    student, label, conf, valid = inputs(shape, dtype, seed=5)
    ref_loss, ref_grad = loss_and_grad(pseudo_label_ce_reference, student, label, conf, valid, THRESH)
    for chunk in (21 * 9 * 3, 21 * 10 * 9 * 2):  # rows of one sample; two whole samples
        force_chunk_elements(monkeypatch, chunk)
        loss, grad = loss_and_grad(lambda *a: kernels.pseudo_label_ce(*a, backend="torch"),
                                   student, label, conf, valid, THRESH)
        torch.testing.assert_close(loss, ref_loss, **LOSS_TOL)
        torch.testing.assert_close(grad, ref_grad, **grad_tol(dtype))


@needs_triton
def test_out_of_range_labels_are_rejected() -> None:
    student, label, conf, valid = inputs(Shape(1, 5, 3, 3, False), torch.float32, seed=6)
    label[0, 1, 1] = 255
    with pytest.raises(ValueError, match=r"label values must be in \[0, 4\].*got values in \[\d+, 255\]"):
        kernels.pseudo_label_ce(student, label, conf, valid, THRESH, backend="triton")


@pytest.mark.parametrize(("name", "bad", "message"), [
    ("label", torch.zeros(2, 4, 5, dtype=torch.int64), r"label must be shape \(2, 4, 4\) to match student_logits"),
    ("label", torch.zeros(2, 4, 4, dtype=torch.int32), r"label must be torch.int64"),
    ("conf", torch.zeros(2, 4, 4, dtype=torch.bfloat16), r"conf must be torch.float32"),
    ("valid", torch.ones(2, 4, 4), r"valid must be torch.bool"),
])
def test_bad_maps_are_rejected(name: str, bad: torch.Tensor, message: str) -> None:
    args = {"student_logits": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 4, 4, dtype=torch.int64),
            "conf": torch.zeros(2, 4, 4), "valid": torch.ones(2, 4, 4, dtype=torch.bool)}
    args[name] = bad
    with pytest.raises(ValueError, match=message):
        kernels.pseudo_label_ce(*args.values(), THRESH, backend="torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_and_strided_views(backend: str) -> None:
    # The trainer passes seg_u = seg.split([B_l, B_u])[1]: a view with a storage offset; strided
    # (every other column) views must work too. The gradient lands in the right slice of the leaf.
    student, label, conf, valid = inputs(Shape(5, 21, 7, 18, False), torch.float32, seed=7)
    leaf = student.clone().requires_grad_()
    loss = kernels.pseudo_label_ce(leaf.split([2, 3])[1][..., ::2], label[2:, :, ::2], conf[2:, :, ::2],
                                   valid[2:, :, ::2], THRESH, backend=backend)
    loss.backward()
    ref_loss, ref_grad = loss_and_grad(pseudo_label_ce_reference, student[2:, ..., ::2].contiguous(),
                                       label[2:, :, ::2], conf[2:, :, ::2], valid[2:, :, ::2], THRESH)
    torch.testing.assert_close(loss.detach(), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(leaf.grad[2:, ..., ::2], ref_grad, **grad_tol(torch.float32))
    assert torch.count_nonzero(leaf.grad[:2]) == 0 and torch.count_nonzero(leaf.grad[2:, ..., 1::2]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_view_whose_rows_are_not_back_to_back(backend: str) -> None:
    # A crop of a larger map: stride_h != W * stride_w, so the kernels take the (row, column)
    # addressing instead of the flat pixel axis of dense layouts.
    student, label, conf, valid = inputs(Shape(2, 19, 12, 20, False), torch.float32, seed=8)
    window = (slice(None), slice(None), slice(2, 9), slice(3, 16))
    maps = (slice(None), slice(2, 9), slice(3, 16))
    leaf = student.clone().requires_grad_()
    loss = kernels.pseudo_label_ce(leaf[window], label[maps], conf[maps], valid[maps], THRESH, backend=backend)
    loss.backward()
    ref_loss, ref_grad = loss_and_grad(pseudo_label_ce_reference, student[window].contiguous(), label[maps],
                                       conf[maps], valid[maps], THRESH)
    torch.testing.assert_close(loss.detach(), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(leaf.grad[window], ref_grad, **grad_tol(torch.float32))
    assert torch.count_nonzero(leaf.grad) == torch.count_nonzero(leaf.grad[window])
    label_w, conf_w, _ = kernels.pseudo_label(student[window], backend=backend)
    ref_label, ref_conf, _ = pseudo_label_reference(student[window])
    assert torch.equal(label_w, ref_label)
    torch.testing.assert_close(conf_w, ref_conf)
