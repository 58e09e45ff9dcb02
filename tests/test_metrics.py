"""Confusion-matrix mIoU against an independent numpy computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastforec.metrics import ConfusionMatrix
from tests import child_process

IGNORE = 255


def _numpy_iou(preds: list[np.ndarray], targets: list[np.ndarray], num_classes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU by counting set sizes directly (no confusion matrix), NaN where absent."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for pred, target in zip(preds, targets):
        keep = target != IGNORE
        p, t = pred[keep], target[keep]
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (t == c))
            union[c] += np.sum((p == c) | (t == c))
    iou = np.full(num_classes, np.nan)
    iou[union > 0] = inter[union > 0] / union[union > 0]
    return iou, union


def test_hand_computed_case() -> None:
    # 2x3 image, classes 0..2 plus one ignored pixel.
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = ground truth, columns = prediction; the ignored pixel's prediction does not count
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    out = cm.compute()
    # class 0: tp 1, union 2; class 1: tp 2, union 4; class 2: tp 0, union 1
    assert out["iou"] == pytest.approx([0.5, 0.5, 0.0])
    assert out["miou"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert out["pixel_acc"] == pytest.approx(3 / 5)


def test_random_batches_match_numpy_and_absent_classes_are_nan() -> None:
    rng = np.random.default_rng(0)
    num_classes = 7
    preds, targets = [], []
    cm = ConfusionMatrix(num_classes)
    for _ in range(3):
        # classes 0..4 only: 5 and 6 never appear, so their IoU is NaN and they leave the mean
        target = rng.integers(0, 5, size=(2, 17, 23))
        target[rng.random(target.shape) < 0.2] = IGNORE
        pred = np.where(rng.random(target.shape) < 0.6, np.where(target == IGNORE, 0, target),
                        rng.integers(0, 5, size=target.shape))
        preds.append(pred)
        targets.append(target)
        cm.update(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(target).to(torch.uint8))
    iou_ref, union = _numpy_iou(preds, targets, num_classes)
    out = cm.compute()
    assert len(out["iou"]) == num_classes
    np.testing.assert_allclose(np.array(out["iou"]), iou_ref, rtol=1e-12, equal_nan=True)
    assert math.isnan(out["iou"][5]) and math.isnan(out["iou"][6])
    assert out["miou"] == pytest.approx(float(np.nanmean(iou_ref)), rel=1e-12)
    assert int(cm.mat.sum()) == sum(int((t != IGNORE).sum()) for t in targets)


def test_a_class_only_predicted_counts_in_the_mean() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    out = cm.compute()
    # class 2 never in ground truth but predicted: IoU 0, and it is part of the mean
    assert out["iou"][0] == pytest.approx(0.5) and out["iou"][2] == 0.0 and math.isnan(out["iou"][1])
    assert out["miou"] == pytest.approx(0.25)


def test_empty_and_reset() -> None:
    cm = ConfusionMatrix(4)
    out = cm.compute()
    assert math.isnan(out["miou"]) and all(math.isnan(v) for v in out["iou"])
    cm.update(torch.tensor([1]), torch.tensor([IGNORE]))  # everything ignored
    assert int(cm.mat.sum()) == 0
    cm.update(torch.tensor([1]), torch.tensor([1]))
    assert cm.compute()["miou"] == 1.0
    cm.reset()
    assert int(cm.mat.sum()) == 0


def test_target_outside_the_classes_is_an_error() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target holds class 3 outside 0..2 \(and not ignore_index=255\)"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))


def _no_group_worker(queue) -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.mat.clone()
    cm.all_reduce()
    queue.put((dist.is_initialized(), torch.equal(cm.mat, before)))


def test_all_reduce_without_a_process_group_is_a_no_op() -> None:
    # a fresh interpreter: other test modules leave a world of one behind in this one
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_no_group_worker, args=(queue,))
    p.start()
    # the answer within the test's time (a spawned interpreter imports torch: slow on a busy machine)
    assert queue.get(timeout=child_process.limit()) == (False, True)
    p.join()


def _two_rank_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(3)
        # rank 0 sees two pixels, rank 1 three (one ignored)
        if rank == 0:
            cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
        else:
            cm.update(torch.tensor([2, 2, 1]), torch.tensor([2, 1, 255]))
        cm.all_reduce()
        torch.save(cm.mat, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_ranks(tmp_path: Path) -> None:
    out = str(tmp_path / "mat")
    mp.start_processes(_two_rank_worker, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=2,
                       start_method="spawn")
    want = [[1, 1, 0], [0, 0, 1], [0, 0, 1]]
    for rank in (0, 1):
        assert torch.load(f"{out}.{rank}").tolist() == want, rank
