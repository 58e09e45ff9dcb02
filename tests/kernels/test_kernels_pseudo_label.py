"""kernels.pseudo_label against fastforec.losses.pseudo_label_reference, both backends."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BACKENDS, DTYPES, SHAPES, Shape, force_chunk_elements, layout, logits

import fastforec_kernels as kernels
from fastforec.losses import pseudo_label_reference

FG = (1, 2, 3, 7, 11, 18)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend: str, dtype: torch.dtype, shape: Shape) -> None:
    x = logits(shape, dtype, seed=shape.classes)
    before = x.clone()
    label, conf, fg = kernels.pseudo_label(x, FG, backend=backend)
    assert torch.equal(x, before)  # the input is never used as scratch space
    ref_label, ref_conf, ref_fg = pseudo_label_reference(x, FG)
    assert label.dtype == torch.int64 and conf.dtype == torch.float32 and fg.dtype == torch.bool
    assert label.shape == conf.shape == fg.shape == (shape.batch, shape.height, shape.width)
    assert torch.equal(label, ref_label)
    torch.testing.assert_close(conf, ref_conf, rtol=1e-6, atol=1e-7)
    assert torch.equal(fg, ref_fg)
    assert fg.any() and not fg.all()  # the fg map is informative here


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_go_to_the_lowest_class(backend: str, dtype: torch.dtype) -> None:
    shape = Shape(3, 21, 5, 7, False)
    x = torch.zeros((shape.batch, shape.classes, shape.height, shape.width), dtype=dtype)
    x[0, [4, 9, 20]] = 2.0  # three-way tie, not at class 0
    x[1, [0, 20]] = 1.5  # tie between the first and the last class
    # sample 2: all classes equal -> class 0 with probability 1/C
    for channels_last in (False, True):
        label, conf, _ = kernels.pseudo_label(layout(x, channels_last), backend=backend)
        assert torch.equal(label, torch.argmax(x.float(), dim=1))
        assert (label[0] == 4).all() and (label[1] == 0).all() and (label[2] == 0).all()
        torch.testing.assert_close(conf[2], torch.full_like(conf[2], 1.0 / shape.classes))
        torch.testing.assert_close(conf, pseudo_label_reference(x)[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logits_label_in_range_like_torch_argmax(backend: str) -> None:
    # 5 classes in a block of 8: an all-NaN pixel once took a padding class and read the
    # foreground table past its end. torch.argmax counts NaN as the maximum (first NaN wins).
    shape = Shape(2, 5, 3, 4, False)
    x = logits(shape, torch.float32, seed=5)
    x[0, :, 0, 0] = float("nan")  # every class
    x[0, 3, 1, 1] = float("nan")  # one class
    x[1, 2:, 2, 3] = float("nan")  # the last three
    label, conf, fg = kernels.pseudo_label(x, [3, 4], backend=backend)
    assert torch.equal(label, torch.argmax(x, dim=1))
    assert (label[0, 0, 0], label[0, 1, 1], label[1, 2, 3]) == (0, 3, 2)
    assert torch.equal(fg, (label == 3) | (label == 4))
    nan = torch.isnan(x).any(dim=1)
    assert torch.isnan(conf[nan]).all() and torch.isfinite(conf[~nan]).all()
    torch.testing.assert_close(conf[~nan], pseudo_label_reference(x)[1][~nan])


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreground_classes(backend: str) -> None:
    shape = Shape(3, 5, 4, 6, False)
    x = logits(shape, torch.float32, seed=3)
    label, _, fg = kernels.pseudo_label(x, None, backend=backend)
    assert not fg.any()  # no fg classes -> all background, as the reference
    _, _, fg = kernels.pseudo_label(x, torch.tensor([1, 4, 99]), backend=backend)  # 99 > C: ignored
    assert torch.equal(fg, (label == 1) | (label == 4))
    _, _, fg = kernels.pseudo_label(x, [], backend=backend)
    assert not fg.any()


def test_torch_backend_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks force both the grouping of whole samples and the split of a sample by rows.
    x = logits(Shape(3, 21, 10, 9, True), torch.float32, seed=5)
    ref = pseudo_label_reference(x, FG)
    for chunk in (21 * 9 * 3, 21 * 10 * 9 * 2):
        force_chunk_elements(monkeypatch, chunk)
        for got, want in zip(kernels.pseudo_label(x, FG, backend="torch"), ref):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_not_differentiable_and_detached() -> None:
    x = logits(Shape(1, 21, 4, 4, False), torch.float32, seed=0).requires_grad_()
    label, conf, fg = kernels.pseudo_label(x, FG, backend="torch")
    assert not conf.requires_grad


@pytest.mark.parametrize(("bad", "message"), [
    (torch.zeros(2, 21, 8), r"teacher_logits must be 4-D"),
    (torch.zeros(2, 21, 8, 8, dtype=torch.int64), r"teacher_logits must be float32, bfloat16 or float16"),
    (torch.zeros(2, 0, 8, 8), r"teacher_logits must be non-empty"),
])
def test_bad_logits_are_rejected(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.pseudo_label(bad, backend="torch")


def test_bad_fg_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"fg_classes must be a sequence of class ids >= 0"):
        kernels.pseudo_label(torch.zeros(1, 3, 2, 2), [1, -2], backend="torch")
