"""Reference losses (docs/architecture.md section A, step 5) against small hand-computed numpy cases.

The public ``pseudo_label``/``pseudo_label_ce``/``masked_mse`` dispatch to ``kernels``; they are
checked with ``backend="torch"`` to equal the references (the Triton versions have their own tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastforec import losses
from fastforec.losses import (
    IGNORE_INDEX,
    cutmix,
    cutmix_batch,
    fgbg_loss,
    foreground_map,
    masked_mse_reference,
    pseudo_label_ce_reference,
    pseudo_label_reference,
    rec_targets_labeled,
    rec_targets_unlabeled,
    supervised_ce,
)


def _np_log_softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _np_ce(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-pixel CE of (B,C,H,W) logits; ignored labels get 0."""
    logp = _np_log_softmax(logits.astype(np.float64), axis=1)
    safe = np.where(label == IGNORE_INDEX, 0, label)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return np.where(label == IGNORE_INDEX, 0.0, -picked)


def _grads_are_zero(t: torch.Tensor) -> bool:
    return t.grad is not None and bool(torch.isfinite(t.grad).all()) and bool((t.grad == 0).all())


# ---------------------------------------------------------------------------------------------
# supervised CE


def test_supervised_ce_hand_computed_with_ignore() -> None:
    # one image, 1x3 pixels, 2 classes; the third pixel is ignored
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    ce0 = -np.log(np.exp(2) / (np.exp(2) + 1))  # log(1 + e^-2)
    ce1 = -np.log(np.e / (1 + np.e))  # log(1 + e^-1)
    assert supervised_ce(logits, target).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_supervised_ce_random_against_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 6, generator=gen) * 3
    target = torch.randint(0, 5, (2, 4, 6), generator=gen)
    target[0, :2] = IGNORE_INDEX
    ce = _np_ce(logits.numpy(), target.numpy())
    expected = ce.sum() / (target.numpy() != IGNORE_INDEX).sum()
    assert supervised_ce(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_supervised_ce_all_ignored_is_zero_without_nan() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = supervised_ce(logits, torch.full((1, 2, 2), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0
    assert _grads_are_zero(logits)


# ---------------------------------------------------------------------------------------------
# pseudo-labels


def test_pseudo_label_reference_hand_computed() -> None:
    # 3 pixels (1x3), 3 classes
    logits = torch.tensor([[[[0.0, 3.0, 1.0]], [[0.0, 0.0, 2.0]], [[np.log(2.0), 0.0, 1.0]]]])
    label, conf, fg = pseudo_label_reference(logits, fg_classes=[2])
    assert label.dtype == torch.int64 and conf.dtype == torch.float32 and fg.dtype == torch.bool
    assert label.tolist() == [[[2, 0, 1]]]
    # pixel 0: probs (1, 1, 2)/4 -> 0.5; pixel 1: e^3/(e^3+2); pixel 2: e^2/(e^2+2e)
    expected = [0.5, np.exp(3) / (np.exp(3) + 2), np.exp(2) / (np.exp(2) + 2 * np.e)]
    np.testing.assert_allclose(conf[0, 0].numpy(), expected, rtol=1e-6)
    assert fg.tolist() == [[[True, False, False]]]
    _, _, no_fg = pseudo_label_reference(logits)
    assert not no_fg.any()


def test_pseudo_label_ce_is_normalised_by_valid_pixels_not_confident_ones() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 1, 4, generator=gen)
    label = torch.tensor([[[0, 1, 2, 3]]])
    conf = torch.tensor([[[0.99, 0.50, 0.97, 0.99]]])
    valid = torch.tensor([[[True, True, True, False]]])
    ce = _np_ce(logits.numpy(), label.numpy())[0, 0]
    # confident and valid: pixels 0 and 2; valid: 3 pixels
    expected = (ce[0] + ce[2]) / 3
    got = pseudo_label_ce_reference(logits, label, conf, valid, 0.95)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_ce_threshold_is_strict() -> None:
    logits = torch.tensor([[[[1.0]], [[0.0]]]])
    label = torch.tensor([[[1]]])
    valid = torch.ones(1, 1, 1, dtype=torch.bool)
    at = pseudo_label_ce_reference(logits, label, torch.tensor([[[0.95]]]), valid, 0.95)
    above = pseudo_label_ce_reference(logits, label, torch.tensor([[[0.9501]]]), valid, 0.95)
    assert at.item() == 0.0
    assert above.item() == pytest.approx(np.log(1 + np.e), rel=1e-6)  # CE of class 1


@pytest.mark.parametrize("case", ["no_valid", "no_confident"])
def test_pseudo_label_ce_empty_is_zero_without_nan(case: str) -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    label = torch.zeros(2, 4, 4, dtype=torch.int64)
    if case == "no_valid":
        conf, valid = torch.ones(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool)
    else:
        conf, valid = torch.full((2, 4, 4), 0.5), torch.ones(2, 4, 4, dtype=torch.bool)
    loss = pseudo_label_ce_reference(logits, label, conf, valid, 0.95)
    loss.backward()
    assert loss.item() == 0.0
    assert _grads_are_zero(logits)


# ---------------------------------------------------------------------------------------------
# masked MSE


def test_masked_mse_hand_computed() -> None:
    # one image, 1x2 pixels: pixel 0 foreground and in the mask, pixel 1 background in the mask
    rec = torch.tensor([[[[0.5, 0.2]], [[0.0, 0.1]], [[1.0, 0.0]]]])
    image = torch.tensor([[[[0.1, 0.9]], [[0.3, 0.9]], [[0.2, 0.9]]]])
    fg = torch.tensor([[[True, False]]])
    mask = torch.tensor([[[True, True]]])
    # pixel 0: target = image; pixel 1: target = 0 (black background)
    sq = (0.4 ** 2 + 0.3 ** 2 + 0.8 ** 2) + (0.2 ** 2 + 0.1 ** 2 + 0.0)
    assert masked_mse_reference(rec, image, fg, mask).item() == pytest.approx(sq / (3 * 2), rel=1e-6)
    # masking pixel 1 out leaves pixel 0 alone, normalised by 3 * 1
    only0 = torch.tensor([[[True, False]]])
    expected0 = (0.4 ** 2 + 0.3 ** 2 + 0.8 ** 2) / 3
    assert masked_mse_reference(rec, image, fg, only0).item() == pytest.approx(expected0, rel=1e-6)


def test_masked_mse_random_against_numpy() -> None:
    rng = np.random.default_rng(2)
    rec, image = rng.random((2, 3, 5, 7)), rng.random((2, 3, 5, 7))
    fg, mask = rng.random((2, 5, 7)) < 0.4, rng.random((2, 5, 7)) < 0.7
    target = image * fg[:, None]
    expected = ((rec - target) ** 2 * mask[:, None]).sum() / (3 * mask.sum())
    got = masked_mse_reference(torch.from_numpy(rec).float(), torch.from_numpy(image).float(),
                               torch.from_numpy(fg), torch.from_numpy(mask))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_masked_mse_empty_mask_is_zero_without_nan() -> None:
    rec = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = masked_mse_reference(rec, torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool),
                                torch.zeros(1, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert _grads_are_zero(rec)


# ---------------------------------------------------------------------------------------------
# the public (dispatching) functions with the torch backend equal the references


def test_public_losses_with_torch_backend_equal_the_references() -> None:
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 4, 6, 5, generator=gen) * 4
    student = torch.randn(2, 4, 6, 5, generator=gen)
    valid = torch.rand(2, 6, 5, generator=gen) < 0.8
    label, conf, fg = losses.pseudo_label(teacher, [1, 3], backend="torch")
    ref_label, ref_conf, ref_fg = pseudo_label_reference(teacher, [1, 3])
    assert torch.equal(label, ref_label) and torch.equal(fg, ref_fg)
    torch.testing.assert_close(conf, ref_conf)
    torch.testing.assert_close(losses.pseudo_label_ce(student, label, conf, valid, 0.6, backend="torch"),
                               pseudo_label_ce_reference(student, label, conf, valid, 0.6))
    rec, image = torch.rand(2, 3, 6, 5, generator=gen), torch.rand(2, 3, 6, 5, generator=gen)
    torch.testing.assert_close(losses.masked_mse(rec, image, fg, valid, backend="torch"),
                               masked_mse_reference(rec, image, fg, valid))


def test_references_compute_in_the_dtype_asked_for() -> None:
    """`bench --what gpu-check` takes its ground truth from the references with dtype=torch.float64:
    values and autograd gradients to fp64 precision; without it they compute in fp32, whatever the input."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 5, 4, 3)) * 3
    label, conf, valid = rng.integers(0, 5, (2, 4, 3)), rng.random((2, 4, 3)), rng.random((2, 4, 3)) < 0.8
    x = torch.from_numpy(logits).requires_grad_()
    args = (torch.from_numpy(label), torch.from_numpy(conf), torch.from_numpy(valid), 0.5)
    loss = pseudo_label_ce_reference(x, *args, dtype=torch.float64)
    loss.backward()
    keep = (conf > 0.5) & valid
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx((_np_ce(logits, label) * keep).sum() / valid.sum(), rel=1e-13)
    prob = np.exp(_np_log_softmax(logits, axis=1))
    onehot = np.eye(5)[label].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.grad.numpy(), (prob - onehot) * keep[:, None] / valid.sum(), rtol=1e-12, atol=1e-15)
    ref_label, ref_conf, _ = pseudo_label_reference(x.detach(), dtype=torch.float64)
    assert ref_conf.dtype == torch.float64 and np.array_equal(ref_label.numpy(), prob.argmax(axis=1))
    np.testing.assert_allclose(ref_conf.numpy(), prob.max(axis=1), rtol=1e-14)
    assert pseudo_label_ce_reference(x.detach(), *args).dtype == torch.float32  # fp64 input, default dtype

    rec, image = rng.random((2, 3, 4, 3)), rng.random((2, 3, 4, 3))
    fg, mask = rng.random((2, 4, 3)) < 0.5, rng.random((2, 4, 3)) < 0.7
    r = torch.from_numpy(rec).requires_grad_()
    maps = (torch.from_numpy(image), torch.from_numpy(fg), torch.from_numpy(mask))
    mse = masked_mse_reference(r, *maps, dtype=torch.float64)
    mse.backward()
    diff = (rec - image * fg[:, None]) * mask[:, None]
    assert mse.dtype == torch.float64 and mse.item() == pytest.approx((diff ** 2).sum() / (3 * mask.sum()), rel=1e-13)
    np.testing.assert_allclose(r.grad.numpy(), 2 * diff / (3 * mask.sum()), rtol=1e-12, atol=1e-15)
    assert masked_mse_reference(r.detach(), *maps).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# reconstruction targets


def test_foreground_map_from_list_or_tensor_never_marks_ignore() -> None:
    label = torch.tensor([[0, 1, 2, 3, IGNORE_INDEX]])
    assert foreground_map(label, [1, 3]).tolist() == [[False, True, False, True, False]]
    assert foreground_map(label, torch.tensor([2])).tolist() == [[False, False, True, False, False]]


def test_rec_targets_labeled() -> None:
    label = torch.tensor([[[0, 1, 2, IGNORE_INDEX]]])
    fg, mask = rec_targets_labeled(label, method="rec", fg_classes=[1])
    assert mask.tolist() == [[[True, True, True, False]]]
    assert fg.tolist() == [[[True, True, True, False]]]  # rec: the whole image is the target
    fg, mask = rec_targets_labeled(label, method="forec", fg_classes=[1, 2])
    assert mask.tolist() == [[[True, True, True, False]]]  # background is reconstructed as black
    assert fg.tolist() == [[[False, True, True, False]]]


def test_rec_targets_unlabeled() -> None:
    pl_fg = torch.tensor([[[True, True, False, True]]])
    conf = torch.tensor([[[0.99, 0.50, 0.99, 0.99]]])
    valid = torch.tensor([[[True, True, True, False]]])  # the last pixel is crop padding
    fg, mask = rec_targets_unlabeled(pl_fg, conf, valid, method="rec", rec_thresh=0.9)
    assert fg.tolist() == [[[True, True, True, False]]] and mask.tolist() == [[[True, True, True, False]]]
    fg, mask = rec_targets_unlabeled(pl_fg, conf, valid, method="forec", rec_thresh=0.9)
    assert fg.tolist() == [[[True, True, False, False]]]
    assert mask.tolist() == [[[True, False, True, False]]]  # uncertain and padding pixels left out


def test_forec_labeled_loss_matches_the_design_formula() -> None:
    # L_rec labeled (forec) = sum(mask * (r - x * [y in FG])^2) / (3 * sum(mask)), mask = y != 255
    rng = np.random.default_rng(4)
    x, r = rng.random((1, 3, 4, 4)), rng.random((1, 3, 4, 4))
    y = rng.integers(0, 4, size=(1, 4, 4))
    y[0, 0, :2] = IGNORE_INDEX
    in_fg = np.isin(y, [2, 3])
    valid = y != IGNORE_INDEX
    expected = (valid[:, None] * (r - x * in_fg[:, None]) ** 2).sum() / (3 * valid.sum())
    fg, mask = rec_targets_labeled(torch.from_numpy(y), method="forec", fg_classes=[2, 3])
    got = masked_mse_reference(torch.from_numpy(r).float(), torch.from_numpy(x).float(), fg, mask)
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# fg/bg auxiliary loss


def test_fgbg_loss_hand_computed_and_empty() -> None:
    logits = torch.tensor([[[[0.0, 2.0, -1.0]]]])  # (B, 1, H, W)
    fg = torch.tensor([[[True, False, False]]])
    mask = torch.tensor([[[True, True, False]]])
    # BCE(0, 1) = log 2; BCE(2, 0) = log(1 + e^2); the third pixel is masked out
    expected = (np.log(2.0) + np.log(1 + np.exp(2.0))) / 2
    assert fgbg_loss(logits, fg, mask).item() == pytest.approx(expected, rel=1e-6)
    empty = torch.zeros(1, 1, 3, requires_grad=True)
    loss = fgbg_loss(empty.unsqueeze(1), fg, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and _grads_are_zero(empty)


# ---------------------------------------------------------------------------------------------
# CutMix


def test_cutmix_pastes_inside_the_box_for_maps_and_images() -> None:
    box = torch.tensor([[[False, True], [False, True]]])
    a, b = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    assert cutmix(box, a, b).tolist() == [[[0.0, 1.0], [0.0, 1.0]]]
    img_a, img_b = torch.zeros(1, 3, 2, 2), torch.arange(12.0).view(1, 3, 2, 2)
    out = cutmix(box, img_a, img_b)
    assert torch.equal(out[..., 1], img_b[..., 1]) and not out[..., 0].any()


def test_cutmix_batch_keeps_image_label_conf_and_valid_aligned() -> None:
    b, h, w = 3, 4, 5
    image = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).clone()
    label = torch.arange(b).view(b, 1, 1).expand(b, h, w).clone()
    conf = torch.tensor([0.1, 0.2, 0.3]).view(b, 1, 1).expand(b, h, w).clone()
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[1, :, -1] = False  # sample 1 has a padded column
    box = torch.zeros(b, h, w, dtype=torch.bool)
    box[0, 1:3, 2:5] = True  # sample 0 receives a box from its partner
    box[2, 0, 0] = True
    perm = torch.tensor([1, 2, 0])
    mi, ml, mc, mv = cutmix_batch(box, perm, image, label, conf, valid)
    for i in range(b):
        src = torch.where(box[i], perm[i], i)  # which sample each pixel comes from
        assert torch.equal(ml[i], src)
        assert torch.equal(mi[i], src.float().expand(3, h, w))
        assert torch.allclose(mc[i], torch.tensor([0.1, 0.2, 0.3])[src])
        assert torch.equal(mv[i], valid[src, torch.arange(h)[:, None], torch.arange(w)])
    assert not mv[0, 1, 4] and mv[0, 0, 4]  # the partner's padding came along inside the box


def test_the_cutmix_partner_is_the_documented_one() -> None:
    # README / docs: sample i takes its box from sample i - 1 of the same unlabeled batch (sample 0
    # from the last); UniMatch V2's partner is the reversed batch (its flip(0))
    from fastforec.methods import cutmix_partner

    cpu = torch.device("cpu")
    assert cutmix_partner(4, cpu).tolist() == [3, 0, 1, 2]
    assert cutmix_partner(1, cpu).tolist() == [0]
    assert cutmix_partner(4, cpu, reverse=True).tolist() == [3, 2, 1, 0]
