"""Augmentation correctness from output pixels: label/image alignment, and statistics of flip,
scale, grayscale, blur, CutMix and padding over a few hundred samples, for the DALI CPU
pipeline and the PIL/torchvision reference loader alike."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import data_analysis as A
from fastforec.bench.reference_loader import reference_loader
from fastforec.config import AugConfig, DataConfig
from fastforec.data import TrainData
from tests import shard_sets as T
from tests.data.conftest import COORD_SIZE

STATS_CROP = 48
BOX_CROP = 160  # CutMix bounds are checked on a larger crop: less rounding in area/aspect
SIGMAS = 4.0  # tolerance of a rate, in binomial standard deviations
ALIGN_BAND = 2  # pixels around label boundaries where colour and label may disagree


def _tol(p: float, n: int) -> float:
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def _train(manifest, cfg: DataConfig, *, with_unlabeled: bool = True, seed: int = 0) -> TrainData:
    return TrainData(manifest, cfg, rank=0, world_size=1, seed=seed, with_unlabeled=with_unlabeled, device="cpu")


def _dali_unlabeled(manifest, cfg: DataConfig, epochs: int) -> list[dict[str, np.ndarray]]:
    data = _train(manifest, cfg)
    out = []
    for epoch in range(epochs):
        for _ in range(data.steps_per_epoch):
            _, u = data.next_batch()
            out += [{k: v[b].numpy() for k, v in u.items()} for b in range(cfg.batch_size)]
    return out


def _reference_unlabeled(manifest, cfg: DataConfig, passes: int) -> list[dict[str, np.ndarray]]:
    out = []
    for batch in reference_loader(manifest, cfg, split="unlabeled", num_workers=0, passes=passes):
        out += [{k: v[b].numpy() for k, v in batch.items()} for b in range(cfg.batch_size)]
    return out


@dataclass(frozen=True)
class Rates:
    n: int
    flip: float
    gray: float
    blur: float
    scales: np.ndarray
    padding_consistent: bool


def _rates(samples: list[dict[str, np.ndarray]]) -> Rates:
    geo = [A.geometry(s["weak"], source_hw=COORD_SIZE) for s in samples]
    return Rates(n=len(samples),
                 flip=float(np.mean([g.flipped for g in geo])),
                 gray=float(np.mean([A.is_gray(s["strong"], s["valid"]) for s in samples])),
                 blur=float(np.mean([A.is_blurred(s["weak"], s["strong"], s["valid"]) for s in samples])),
                 scales=np.array([(g.scale_x, g.scale_y) for g in geo]),
                 padding_consistent=all((A.padding(s["weak"]) == ~s["valid"]).all() for s in samples))


# Jitter off so that a drop of texture energy can only be the blur; sigma >= 1 so the blur is
# visible at all (sigma 0.1 is an identity); everything else at the paper's defaults.
STATS_AUG = AugConfig(jitter_prob=0.0, blur_sigma_min=1.0)


@pytest.fixture(scope="module")
def dali_stats(coordinate_data) -> Rates:
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=STATS_AUG)
    return _rates(_dali_unlabeled(coordinate_data, cfg, epochs=10))  # 320 samples


@pytest.fixture(scope="module")
def reference_stats(coordinate_data) -> Rates:
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=STATS_AUG)
    return _rates(_reference_unlabeled(coordinate_data, cfg, passes=5))  # 160 samples


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_unlabeled_rates_match_config(loader, dali_stats, reference_stats):
    r = dali_stats if loader == "dali" else reference_stats
    aug = STATS_AUG
    assert abs(r.flip - aug.flip_prob) < _tol(aug.flip_prob, r.n), r.flip
    assert abs(r.gray - aug.grayscale_prob) < _tol(aug.grayscale_prob, r.n), r.gray
    assert abs(r.blur - aug.blur_prob) < _tol(aug.blur_prob, r.n), r.blur
    assert r.padding_consistent


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_scale_range(loader, dali_stats, reference_stats):
    scales = (dali_stats if loader == "dali" else reference_stats).scales
    lo, hi = STATS_AUG.scale_min, STATS_AUG.scale_max
    assert scales.min() > lo * 0.95 and scales.max() < hi * 1.05, (scales.min(), scales.max())
    # uniform on [lo, hi]: both ends are reached and the mean is in the middle
    assert scales.min() < lo + 0.1 and scales.max() > hi - 0.2
    mean, sd = (lo + hi) / 2, (hi - lo) / math.sqrt(12)
    assert abs(scales[:, 0].mean() - mean) < SIGMAS * sd / math.sqrt(len(scales))
    # isotropic: the same factor on both axes (up to rounding of the scaled size)
    assert np.abs(scales[:, 0] - scales[:, 1]).max() < 0.08


def test_dali_and_reference_agree(dali_stats, reference_stats):
    for name in ("flip", "gray", "blur"):
        p = (getattr(dali_stats, name) + getattr(reference_stats, name)) / 2
        tol = SIGMAS * math.sqrt(p * (1 - p) * (1 / dali_stats.n + 1 / reference_stats.n))
        assert abs(getattr(dali_stats, name) - getattr(reference_stats, name)) < tol, name


def test_grayscale_rate_with_jitter(coordinate_data):
    """Grayscale composes with colour jitter (grayscale of the jittered image)."""
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=AugConfig(blur_prob=0.0))
    samples = _dali_unlabeled(coordinate_data, cfg, epochs=6)
    gray = np.mean([A.is_gray(s["strong"], s["valid"]) for s in samples])
    assert abs(gray - cfg.aug.grayscale_prob) < _tol(cfg.aug.grayscale_prob, len(samples))
    for s in samples:  # [0, 1] even where brightness 1.5 would overflow
        assert s["strong"].min() >= 0.0 and s["strong"].max() <= 1.0
        assert s["weak"].min() >= 0.0 and s["weak"].max() <= 1.0


def _box_stats(samples: list[dict[str, np.ndarray]]) -> list[A.Box]:
    return [A.box(s["box"]) for s in samples]


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_cutmix_rate_and_box_bounds(loader, coordinate_data):
    aug = AugConfig(jitter_prob=0.0, blur_prob=0.0, grayscale_prob=0.0)
    cfg = DataConfig(crop_size=BOX_CROP, batch_size=8, aug=aug)
    samples = (_dali_unlabeled(coordinate_data, cfg, epochs=8) if loader == "dali"
               else _reference_unlabeled(coordinate_data, cfg, passes=4))
    boxes = _box_stats(samples)
    rate = np.mean([b.present for b in boxes])
    assert abs(rate - aug.cutmix_prob) < _tol(aug.cutmix_prob, len(boxes))
    drawn = [b for b in boxes if b.present]
    rounding = 2.0 / BOX_CROP  # half a pixel on each side of each extent
    assert all(b.rectangle for b in drawn)
    areas, aspects = np.array([b.area for b in drawn]), np.array([b.aspect for b in drawn])
    assert areas.min() > aug.cutmix_area_min - rounding and areas.max() < aug.cutmix_area_max + rounding
    assert areas.max() > 0.3 and areas.min() < 0.1  # the range is used, not a point
    assert aspects.min() > aug.cutmix_aspect_min * 0.85 and aspects.max() < (1 / aug.cutmix_aspect_min) / 0.85
    assert aspects.min() < 0.6 and aspects.max() > 1.6


def test_labeled_padding_is_ignore_and_geometry(coordinate_data):
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=AugConfig())
    data = _train(coordinate_data, cfg, with_unlabeled=False)
    flips, scales, padded = [], [], 0
    for epoch in range(8):
        for _ in range(data.steps_per_epoch):
            labeled, unlabeled = data.next_batch()
            assert unlabeled is None
            assert labeled["image"].shape == (8, 3, STATS_CROP, STATS_CROP)
            assert labeled["label"].shape == (8, STATS_CROP, STATS_CROP)
            for image, label in zip(labeled["image"].numpy(), labeled["label"].numpy()):
                pad = A.padding(image)
                # every label is class 1 in the source: 255 exactly on the padding
                np.testing.assert_array_equal(label == 255, pad)
                assert set(np.unique(label[~pad])) <= {1}
                padded += bool(pad.any())
                g = A.geometry(image, source_hw=COORD_SIZE)
                flips.append(g.flipped)
                scales.append(g.scale_x)
    n = len(flips)
    assert abs(np.mean(flips) - cfg.aug.flip_prob) < _tol(cfg.aug.flip_prob, n)
    assert min(scales) > 0.45 and max(scales) < 2.1
    assert padded > 0  # a 60x80 source at scale < 0.8 cannot fill a 48 crop: padding happened


def test_label_image_alignment(class_colour_data):
    """Colours encode classes (half the sources PNG, half JPEG): after scale/crop/flip every
    valid pixel's colour names its label, except within a few pixels of a class boundary
    (bilinear interpolation, JPEG ringing magnified up to 2x)."""
    cfg = DataConfig(crop_size=64, batch_size=4, aug=AugConfig())
    data = _train(class_colour_data, cfg, with_unlabeled=False, seed=3)
    checked = 0
    for epoch in range(3):
        for _ in range(data.steps_per_epoch):
            labeled, _ = data.next_batch()
            for image, label in zip(labeled["image"].numpy(), labeled["label"].numpy()):
                valid = label != 255
                cls = A.nearest_class(image, T.CLASS_PALETTE)
                wrong = valid & (cls != label) & ~A.boundary_band(label, ALIGN_BAND)
                assert not wrong.any(), f"{int(wrong.sum())} misaligned pixels away from boundaries"
                checked += int(valid.sum())
    assert checked > 10000


def test_reference_labeled_contract(coordinate_data):
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=AugConfig())
    batch = next(iter(reference_loader(coordinate_data, cfg, split="labeled", num_workers=2, passes=1)))
    assert batch["image"].shape == (8, 3, STATS_CROP, STATS_CROP) and str(batch["image"].dtype) == "torch.float32"
    assert batch["label"].shape == (8, STATS_CROP, STATS_CROP) and str(batch["label"].dtype) == "torch.int64"
    for image, label in zip(batch["image"].numpy(), batch["label"].numpy()):
        np.testing.assert_array_equal(label == 255, A.padding(image))


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_jitter_rate(loader, coordinate_data):
    """With grayscale and blur off, the strong view differs from the weak one exactly when
    colour jitter was drawn (a draw of four factors all ~1 is vanishingly rare)."""
    aug = AugConfig(grayscale_prob=0.0, blur_prob=0.0)
    cfg = DataConfig(crop_size=STATS_CROP, batch_size=8, aug=aug)
    samples = (_dali_unlabeled(coordinate_data, cfg, epochs=6) if loader == "dali"
               else _reference_unlabeled(coordinate_data, cfg, passes=3))
    changed = np.mean([np.abs(s["strong"] - s["weak"])[:, s["valid"]].max() > 3 / 255 for s in samples])
    assert abs(changed - aug.jitter_prob) < _tol(aug.jitter_prob, len(samples))


def test_colour_matrix():
    from fastforec.data.batch_draws import RGB_TO_YIQ, colour_matrix

    np.testing.assert_allclose(colour_matrix(1.0, 0.0), np.eye(3), atol=1e-6)
    gray = colour_matrix(0.0, 37.0)
    np.testing.assert_allclose(gray, np.tile(RGB_TO_YIQ[0], (3, 1)), atol=2e-3)  # every channel = luma
    rotated = colour_matrix(1.0, 90.0)
    np.testing.assert_allclose(RGB_TO_YIQ[0] @ rotated, RGB_TO_YIQ[0], atol=1e-6)  # hue keeps luma
    assert not np.allclose(rotated, np.eye(3), atol=0.1)
