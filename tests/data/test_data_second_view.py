"""The second strong view (UniMatch): produced only when asked for, its own random draws (stream
batch_draws.STREAM_AUG_UNLABELED_2) that leave every other output as it was, deterministic and resumable
like the rest of the batch."""

from __future__ import annotations


import pytest
import torch

from fastforec.config import AugConfig, DataConfig
from fastforec.data import TrainData
from fastforec.data import batch_draws

CROP = 32
BATCH = 4
FIRST_VIEW_KEYS = ("weak", "strong", "valid", "box")


def _cfg(**aug) -> DataConfig:
    return DataConfig(crop_size=CROP, batch_size=BATCH, aug=AugConfig(**aug))


def _train(manifest, *, views: int, seed: int = 0, cfg: DataConfig | None = None, rank: int = 0,
           world_size: int = 1) -> TrainData:
    return TrainData(manifest, cfg or _cfg(), rank=rank, world_size=world_size, seed=seed, with_unlabeled=True,
                     device="cpu", strong_views=views)


def _box(boxes: batch_draws.CutMixBoxes, b: int) -> torch.Tensor:
    out = torch.zeros(CROP, CROP, dtype=torch.bool)
    if boxes.apply[b]:
        (y, x), (h, w) = boxes.top_left[b], boxes.extent[b]
        out[y: y + h, x: x + w] = True
    return out


def test_second_view_only_when_asked_and_first_view_unchanged(identity_data):
    one, two = _train(identity_data, views=1, seed=5), _train(identity_data, views=2, seed=5)
    for _ in range(3):
        (l1, u1), (l2, u2) = one.next_batch(), two.next_batch()
        assert set(u1) == set(FIRST_VIEW_KEYS)
        assert set(u2) == set(FIRST_VIEW_KEYS) | {"strong2", "box2"}
        assert u2["strong2"].shape == u2["strong"].shape and u2["strong2"].dtype == torch.float32
        assert u2["box2"].shape == u2["box"].shape and u2["box2"].dtype == torch.bool
        # mean teacher's batches do not move when the second view is switched on
        assert all(torch.equal(l1[k], l2[k]) for k in l1)
        assert all(torch.equal(u1[k], u2[k]) for k in FIRST_VIEW_KEYS)


def test_second_view_boxes_are_the_second_streams_draws(identity_data):
    cfg = _cfg(cutmix_prob=0.7)
    data = _train(identity_data, views=2, seed=9, cfg=cfg, rank=1, world_size=2)
    differ = 0
    for step in range(data.steps_per_epoch):
        _, u = data.next_batch()
        rng = batch_draws._rng(9, batch_draws.STREAM_AUG_UNLABELED_2, 1, 0, step)
        batch_draws.draw_photometric(rng, n=BATCH, aug=cfg.aug)  # drawn first, as the loader does
        boxes = batch_draws.draw_cutmix(rng, n=BATCH, crop=CROP, aug=cfg.aug)
        for b in range(BATCH):
            assert torch.equal(u["box2"][b], _box(boxes, b)), (step, b)
        differ += int(not torch.equal(u["box"], u["box2"]))
    assert differ > 0, "the two strong views always drew the same boxes"


def test_second_view_has_its_own_photometric_draw(identity_data):
    # no photometric augmentation: both strong views are the weak view
    plain = _train(identity_data, views=2, cfg=_cfg(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0))
    _, u = plain.next_batch()
    assert torch.equal(u["strong"], u["weak"]) and torch.equal(u["strong2"], u["weak"])
    # always jittered: each view with its own factors, so the two differ per sample
    jittered = _train(identity_data, views=2, cfg=_cfg(jitter_prob=1.0, grayscale_prob=0.0, blur_prob=0.0))
    _, u = jittered.next_batch()
    for b in range(BATCH):
        assert not torch.equal(u["strong"][b], u["strong2"][b])
        assert not torch.equal(u["strong2"][b], u["weak"][b])
    # grayscale drawn for every sample of the second view: its three channels are equal
    gray = _train(identity_data, views=2, cfg=_cfg(jitter_prob=0.0, grayscale_prob=1.0, blur_prob=0.0))
    _, u = gray.next_batch()
    s2 = u["strong2"]
    assert torch.allclose(s2[:, 0], s2[:, 1], atol=1.5 / 255) and torch.allclose(s2[:, 1], s2[:, 2], atol=1.5 / 255)


def test_second_view_deterministic_and_resumes_mid_epoch(identity_data):
    a, b = _train(identity_data, views=2, seed=3), _train(identity_data, views=2, seed=3)
    steps = a.steps_per_epoch
    for _ in range(steps - 2):
        (_, ua), (_, ub) = a.next_batch(), b.next_batch()
        assert all(torch.equal(ua[k], ub[k]) for k in ua)
    expected = [a.next_batch() for _ in range(2)] + [a.next_batch() for _ in range(2)]
    resumed = _train(identity_data, views=2, seed=3)
    resumed.next_batch()  # prefetched batches of the old position must be dropped
    resumed.seek(steps - 2)  # the train state's micro-batch count, as a resume passes it
    got = [resumed.next_batch() for _ in range(2)] + [resumed.next_batch() for _ in range(2)]
    for (le, ue), (lg, ug) in zip(expected, got):
        assert all(torch.equal(le[k], lg[k]) for k in le)
        assert ue.keys() == ug.keys() and all(torch.equal(ue[k], ug[k]) for k in ue)
    other = _train(identity_data, views=2, seed=4)
    _, uo = other.next_batch()
    _, u0 = _train(identity_data, views=2, seed=3).next_batch()
    assert not torch.equal(uo["strong2"], u0["strong2"])


def test_bad_strong_views_is_refused(identity_data):
    with pytest.raises(ValueError, match="strong_views must be 1 or 2, got 3"):
        _train(identity_data, views=3)
