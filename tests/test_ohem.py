"""OHEM cross-entropy against hand-computed cases and a sort-based re-statement of the source's rule.

The rule (UniMatch ``util/ohem.py`` ``ProbOhemCrossEntropy2d``, also U2PL's): p = softmax prob of the
true class, ignored pixels count as p = 1; if fewer valid pixels than min_kept, plain CE; else the
threshold is max(thresh, the min_kept-th smallest p over the batch) and the kept pixels are the
valid ones with p <= threshold; mean CE over them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastforec.config import ConfigError, LossConfig, config_from_dict
from fastforec.losses import IGNORE_INDEX, labeled_loss, ohem_ce, supervised_ce


def _two_class_logits(p_true: list[float], target: list[int]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax gives probability p_true[i] to class target[i]."""
    logits = torch.zeros(1, 2, 1, len(p_true), dtype=torch.float64)
    for i, (p, t) in enumerate(zip(p_true, target)):
        logit = math.log(p / (1 - p))  # 2 classes: softmax of (0, l) gives sigmoid(l) to class 1
        logits[0, 1, 0, i] = logit if t == 1 else -logit
    return logits


def _ce(p: float) -> float:
    return -math.log(p)


def test_keeps_pixels_below_the_threshold_when_enough_of_them() -> None:
    p = [0.1, 0.3, 0.65, 0.8, 0.95]
    target = torch.tensor([[[1, 0, 1, 0, 1]]])
    loss = ohem_ce(_two_class_logits(p, [1, 0, 1, 0, 1]), target, thresh=0.7, min_kept=2)
    # 3 pixels have p <= 0.7 (>= min_kept): the threshold stays 0.7
    assert loss.item() == pytest.approx((_ce(0.1) + _ce(0.3) + _ce(0.65)) / 3, rel=1e-6)


def test_raises_the_threshold_to_the_min_kept_th_smallest_probability() -> None:
    p = [0.1, 0.8, 0.9, 0.95, 0.99]
    loss = ohem_ce(_two_class_logits(p, [0] * 5), torch.zeros(1, 1, 5, dtype=torch.long), thresh=0.7, min_kept=3)
    # only one p <= 0.7: the threshold becomes the 3rd smallest p (0.9)
    assert loss.item() == pytest.approx((_ce(0.1) + _ce(0.8) + _ce(0.9)) / 3, rel=1e-6)


def test_ties_with_the_kth_value_are_all_kept() -> None:
    p = [0.9, 0.9, 0.9, 0.9, 0.99]
    loss = ohem_ce(_two_class_logits(p, [1] * 5), torch.ones(1, 1, 5, dtype=torch.long), thresh=0.7, min_kept=2)
    assert loss.item() == pytest.approx(_ce(0.9), rel=1e-6)  # four pixels kept, all with CE(0.9)


def test_fewer_valid_pixels_than_min_kept_is_plain_ce_over_the_valid_ones() -> None:
    p = [0.2, 0.95, 0.99, 0.5]
    target = torch.tensor([[[0, 0, IGNORE_INDEX, 0]]])
    logits = _two_class_logits(p, [0, 0, 0, 0])
    loss = ohem_ce(logits, target, thresh=0.7, min_kept=10)
    assert loss.item() == pytest.approx((_ce(0.2) + _ce(0.95) + _ce(0.5)) / 3, rel=1e-6)
    assert loss.item() == pytest.approx(supervised_ce(logits, target).item(), rel=1e-6)


def test_ignored_pixels_are_never_kept_and_never_the_kth_value() -> None:
    # the ignored pixel has a low probability for its (ignored) class: it must not count
    p = [0.05, 0.8, 0.85, 0.9]
    target = torch.tensor([[[IGNORE_INDEX, 1, 1, 1]]])
    loss = ohem_ce(_two_class_logits(p, [1] * 4), target, thresh=0.7, min_kept=2)
    assert loss.item() == pytest.approx((_ce(0.8) + _ce(0.85)) / 2, rel=1e-6)


def test_all_pixels_ignored_gives_zero_and_a_zero_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = ohem_ce(logits, torch.full((2, 4, 4), IGNORE_INDEX), thresh=0.7, min_kept=5)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def _sort_reference(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """The source's rule, written with a full sort of the batch's probabilities."""
    valid = (target != IGNORE_INDEX).flatten()
    t = target.flatten().clone()
    t[~valid] = 0
    prob = logits.float().softmax(1).permute(1, 0, 2, 3).reshape(logits.shape[1], -1)
    p = prob[t, torch.arange(t.numel())]
    p[~valid] = 1.0
    keep = valid.clone()
    if int(valid.sum()) >= min_kept:
        threshold = thresh
        kth = p.sort().values[min(p.numel(), min_kept) - 1]
        if kth > thresh:
            threshold = kth
        keep &= p <= threshold
    masked = torch.where(keep, t, torch.full_like(t, IGNORE_INDEX)).view_as(target)
    return F.cross_entropy(logits.float(), masked, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("min_kept", [1, 50, 300, 2000])
def test_random_batches_match_the_sort_based_rule(min_kept: int) -> None:
    g = torch.Generator().manual_seed(min_kept)
    logits = torch.randn(2, 5, 12, 15, generator=g) * 3
    target = torch.randint(0, 5, (2, 12, 15), generator=g)
    target[torch.rand(2, 12, 15, generator=g) < 0.2] = IGNORE_INDEX
    got = ohem_ce(logits, target, thresh=0.7, min_kept=min_kept)
    torch.testing.assert_close(got, _sort_reference(logits, target, 0.7, min_kept), rtol=1e-6, atol=1e-7)


def test_config_selects_the_loss_and_refuses_min_kept_zero() -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    assert labeled_loss(LossConfig()) is supervised_ce
    ohem = labeled_loss(LossConfig(labeled="ohem", ohem_thresh=0.7, ohem_min_kept=3))
    torch.testing.assert_close(ohem(logits, target), ohem_ce(logits, target, thresh=0.7, min_kept=3))
    with pytest.raises(ConfigError, match=r"loss.ohem_min_kept: must be >= 1, got 0 \(for plain cross-entropy set "
                                          r"loss.labeled=ce\)"):
        config_from_dict({"loss": {"labeled": "ohem", "ohem_min_kept": 0}})
    with pytest.raises(ConfigError, match="loss.labeled: must be one of 'ce', 'ohem', got 'focal'"):
        config_from_dict({"loss": {"labeled": "focal"}})
