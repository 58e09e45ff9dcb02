"""Determinism, rank split, epochs and mid-epoch resume of TrainData; ValData coverage.

Samples are identified from pixels: every image of the identity fixture is one flat colour."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from fastforec.config import AugConfig, DataConfig
from fastforec.data import TrainData, ValData, resolve_device
from fastforec.evaluate import resolve_eval_mode
from tests import shard_sets as T

CROP = 32
BATCH = 4
NUM_UNLABELED, LABELED_IDS, VAL_IDS = 26, range(100, 110), range(150, 157)


def _cfg(**aug) -> DataConfig:
    return DataConfig(crop_size=CROP, batch_size=BATCH, aug=AugConfig(**aug))


def _train(manifest, *, rank=0, world_size=1, seed=0, with_unlabeled=True, cfg=None) -> TrainData:
    return TrainData(manifest, cfg or _cfg(), rank=rank, world_size=world_size, seed=seed,
                     with_unlabeled=with_unlabeled, device="cpu")


def _ids(images: torch.Tensor, candidates) -> list[int]:
    """Which sample each (3,H,W) image is: the identity colour nearest to its non-padding mean."""
    colours = {i: np.asarray(T.identity_colour(i), dtype=np.float64) / 255 for i in candidates}
    out = []
    for img in images.numpy():
        valid = ~(img == 0).all(axis=0)
        mean = img[:, valid].mean(axis=1)
        out.append(min(colours, key=lambda i: float(((colours[i] - mean) ** 2).sum())))
    return out


def _epoch_ids(data: TrainData, epoch: int) -> tuple[list[int], list[int]]:
    unl, lab = [], []
    for _ in range(data.steps_per_epoch):
        labeled, unlabeled = data.next_batch()
        lab += _ids(labeled["image"], LABELED_IDS)
        if unlabeled is not None:
            unl += _ids(unlabeled["weak"], range(NUM_UNLABELED))
    return unl, lab


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="data.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("gpu")


def test_same_seed_same_batches_other_seed_differs(identity_data):
    a, b, c = (_train(identity_data, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        (la, ua), (lb, ub), (_, uc) = a.next_batch(), b.next_batch(), c.next_batch()
        assert _same(la, lb) and _same(ua, ub)
    assert not _same(ua, uc)


def test_ranks_disjoint_and_cover_the_epoch(identity_data):
    world = 2
    ranks = [_train(identity_data, rank=r, world_size=world) for r in range(world)]
    per_rank = NUM_UNLABELED // world // BATCH * BATCH
    assert all(r.steps_per_epoch == NUM_UNLABELED // world // BATCH for r in ranks)
    seen = [_epoch_ids(r, 0)[0] for r in ranks]
    assert all(len(s) == len(set(s)) == per_rank for s in seen)
    assert not set(seen[0]) & set(seen[1])
    # 26 samples, 2 ranks x 3 steps x 4: 24 seen, 2 dropped, a different draw next epoch
    assert len(set(seen[0]) | set(seen[1])) == world * per_rank
    nxt = [_epoch_ids(r, 1)[0] for r in ranks]
    assert nxt[0] + nxt[1] != seen[0] + seen[1]
    assert not set(nxt[0]) & set(nxt[1])


def test_labeled_only_epoch_covers_labeled_split(identity_data):
    world = 2
    ranks = [_train(identity_data, rank=r, world_size=world, with_unlabeled=False,
                    cfg=DataConfig(crop_size=CROP, batch_size=5)) for r in range(world)]
    assert [r.steps_per_epoch for r in ranks] == [1, 1]
    lab = [_epoch_ids(r, 0)[1] for r in ranks]
    assert sorted(lab[0] + lab[1]) == list(LABELED_IDS)


def test_labeled_repeats_across_unlabeled_epochs(identity_data):
    data = _train(identity_data)
    labeled = []
    for epoch in range(2):
        labeled += _epoch_ids(data, epoch)[1]
    # 2 epochs x 6 steps x 4 = 48 labeled draws from 10 samples: every sample, balanced
    counts = np.bincount(np.array(labeled) - LABELED_IDS[0], minlength=len(LABELED_IDS))
    assert counts.min() >= 4 and counts.max() <= 5


def test_resume_mid_epoch_gives_identical_batches(identity_data):
    ref = _train(identity_data, seed=3)
    steps = ref.steps_per_epoch
    for _ in range(steps - 2):
        ref.next_batch()
    expected = [ref.next_batch() for _ in range(2)] + [ref.next_batch() for _ in range(2)]

    resumed = _train(identity_data, seed=3)
    resumed.next_batch()  # a pipeline with prefetched batches that must be discarded
    resumed.seek(steps - 2)  # the train state's micro-batch count, as a resume passes it
    got = [resumed.next_batch() for _ in range(2)] + [resumed.next_batch() for _ in range(2)]
    for (le, ue), (lg, ug) in zip(expected, got):
        assert _same(le, lg) and _same(ue, ug)


def test_next_batch_goes_on_into_the_next_epoch(identity_data):
    """The loader's position moves by one per batch and wraps into the next epoch; a seek to a
    count of micro-batches lands on the same batch."""
    data = _train(identity_data, with_unlabeled=False, cfg=DataConfig(crop_size=CROP, batch_size=5))
    assert data.steps_per_epoch == 2
    for _ in range(4):  # two whole epochs
        data.next_batch()
    third_epoch_first = data.next_batch()
    for target in (4, 3):
        sought = _train(identity_data, with_unlabeled=False, cfg=DataConfig(crop_size=CROP, batch_size=5))
        sought.seek(target)
        assert _same(sought.next_batch()[0], third_epoch_first[0]) == (target == 4)
    with pytest.raises(ValueError, match="batches must be >= 0"):
        data.seek(-1)


def test_batch_larger_than_split_is_an_error(identity_data):
    with pytest.raises(ValueError, match="lower data.batch_size"):
        _train(identity_data, world_size=4, cfg=DataConfig(crop_size=CROP, batch_size=8))


def test_batch_contract(identity_data):
    labeled, unlabeled = _train(identity_data, cfg=_cfg(labeled_strong=True)).next_batch()
    assert labeled["image"].dtype == torch.float32 and labeled["image"].shape == (BATCH, 3, CROP, CROP)
    assert labeled["label"].dtype == torch.int64 and labeled["label"].shape == (BATCH, CROP, CROP)
    for key in ("weak", "strong"):
        assert unlabeled[key].dtype == torch.float32 and unlabeled[key].shape == (BATCH, 3, CROP, CROP)
        assert 0.0 <= unlabeled[key].min() and unlabeled[key].max() <= 1.0
    for key in ("valid", "box"):
        assert unlabeled[key].dtype == torch.bool and unlabeled[key].shape == (BATCH, CROP, CROP)
    assert set(labeled["label"].unique().tolist()) <= set(range(7)) | {255}


@pytest.mark.parametrize("eval_batch", [1, 3])
def test_val_ranks_cover_every_sample_once(identity_data, eval_batch):
    cfg = DataConfig()
    world = 2
    seen = []
    for rank in range(world):
        val = ValData(identity_data, cfg, batch_size=eval_batch, rank=rank, world_size=world, device="cpu")
        batches = list(val)
        assert len(batches) == len(val)
        for batch in batches:
            image, label = batch["image"], batch["label"]
            assert image.dtype == torch.float32 and label.dtype == torch.int64
            assert image.shape[0] == label.shape[0] <= eval_batch and image.shape[2:] == label.shape[1:]
            for img, lab in zip(image, label):
                (i,) = _ids(img[None], VAL_IDS)
                h, w = 30 + (i % 5) * 7, 40 + (i % 3) * 9  # the fixture's size rule
                assert (lab[:h, :w] == i % 7).all() and (lab[h:] == 255).all() and (lab[:, w:] == 255).all()
                assert (img[:, h:] == 0).all() and (img[:, :, w:] == 0).all()
                seen.append(i)
    assert sorted(seen) == list(VAL_IDS)


def test_eval_mode_rule():
    assert resolve_eval_mode("auto", "voc") == "whole" and resolve_eval_mode("auto", "folder") == "whole"
    assert resolve_eval_mode("auto", "cityscapes") == "sliding"
    assert resolve_eval_mode("sliding", "voc") == "sliding" and resolve_eval_mode("whole", "cityscapes") == "whole"
    with pytest.raises(ValueError, match="auto, whole or sliding"):
        resolve_eval_mode("tiles", "voc")


def test_batches_stay_valid_while_later_batches_are_made(identity_data):
    """Batches are zero-copy views of DALI buffers: a batch kept by the trainer must not be
    overwritten by the batches produced after it."""
    data = _train(identity_data)
    kept = [data.next_batch() for _ in range(2)]
    copies = [({k: v.clone() for k, v in lab.items()}, {k: v.clone() for k, v in unl.items()}) for lab, unl in kept]
    for epoch in range(3):
        for _ in range(data.steps_per_epoch - (2 if epoch == 0 else 0)):
            data.next_batch()
    for (lab, unl), (lab_copy, unl_copy) in zip(kept, copies):
        assert _same(lab, lab_copy) and _same(unl, unl_copy)


@pytest.mark.parametrize("eval_batch", [1, 3])
def test_val_pipeline_is_built_once_and_repeats_every_evaluation(identity_data, eval_batch):
    val = ValData(identity_data, DataConfig(), batch_size=eval_batch, rank=0, world_size=1, device="cpu")
    first = [{k: v.clone() for k, v in b.items()} for b in val]
    pipe = val._pipe
    for _ in range(2):  # later evaluations reuse the pipeline and see the same batches
        again = list(val)
        assert val._pipe is pipe
        assert len(again) == len(first) == len(val)
        for a, b in zip(first, again):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_masks_built_on_the_device_equal_the_host_masks():
    from fastforec.data import batch_draws
    from fastforec.data.loader import _mask_rectangles, _masks, _masks_on_device

    rng = np.random.default_rng(3)
    crop, n = 24, 16
    sizes = np.stack([rng.integers(8, 60, n), rng.integers(8, 60, n)], axis=1)
    geo = batch_draws.draw_geometry(rng, sizes=sizes, crop=crop, aug=AugConfig())
    boxes = batch_draws.draw_cutmix(rng, n=n, crop=crop, aug=AugConfig(cutmix_prob=0.5))
    assert geo.flip.any() and not geo.flip.all() and boxes.apply.any() and not boxes.apply.all()
    assert (geo.valid < crop).any()  # some crops are padded
    host = _masks(geo, boxes, crop=crop)
    device = _masks_on_device(_mask_rectangles(geo, boxes, crop=crop), crop=crop, device=torch.device("cpu"))
    for h, d in zip(host, device):
        assert d.dtype == torch.bool and torch.equal(h, d)
