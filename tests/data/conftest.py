"""Shard fixtures for the data tests, written in the manifest contract format.

Written with fastforec.data.shard_writer.write_dataset (the shard writer dataprep drives) from
images encoded in memory, so the tests do not depend on dataprep; their manifests' ``source`` is
the benchmarks' (fastforec.bench.datasets), whose image encoder they use. Each fixture is
session-scoped and small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastforec.bench.datasets import SOURCE, encode
from fastforec.data.manifest import Manifest
from fastforec.data.shard_writer import Sample, write_dataset
from tests import shard_sets as T

COORD_SIZE = (60, 80)  # (height, width) of every coordinate image
CLASS_NAMES = [f"class{i}" for i in range(len(T.CLASS_PALETTE))]


def _labeled(key: str, image: np.ndarray, label: np.ndarray, ext: str) -> Sample:
    return Sample(key=key, image=encode(image, ext), image_ext=ext, label=encode(label, "png"))


def _unlabeled(key: str, image: np.ndarray, ext: str) -> Sample:
    return Sample(key=key, image=encode(image, ext), image_ext=ext)


@pytest.fixture(scope="session")
def class_colour_data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """Colours encode classes; sizes vary; PNG and JPEG images; 3-sample shards."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(16):
        h, w = int(rng.integers(40, 90)), int(rng.integers(50, 110))
        image, label = T.class_colour_sample(rng, height=h, width=w)
        samples.append(_labeled(f"c{i:03d}", image, label, "png" if i % 2 else "jpg"))
    unlabeled = [Sample(key=s.key, image=s.image, image_ext=s.image_ext) for s in samples]
    return write_dataset(tmp_path_factory.mktemp("class_colour"),
                         splits={"labeled": samples, "unlabeled": unlabeled, "val": samples[:5]},
                         class_names=CLASS_NAMES, palette=T.CLASS_PALETTE, foreground=[1, 2, 3, 4, 5, 6],
                         source=SOURCE, shard_size=3)


@pytest.fixture(scope="session")
def coordinate_data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """32 identical coordinate images (PNG, exact pixels); every label is class 1, so label 255
    can only come from padding."""
    h, w = COORD_SIZE
    image = T.coordinate_image(height=h, width=w)
    label = np.ones((h, w), dtype=np.uint8)
    labeled = [_labeled(f"k{i:03d}", image, label, "png") for i in range(32)]
    unlabeled = [_unlabeled(f"u{i:03d}", image, "png") for i in range(32)]
    return write_dataset(tmp_path_factory.mktemp("coordinate"),
                         splits={"labeled": labeled, "unlabeled": unlabeled, "val": labeled[:2]},
                         class_names=CLASS_NAMES[:2], palette=T.CLASS_PALETTE[:2], foreground=[1],
                         source=SOURCE, shard_size=8)


@pytest.fixture(scope="session")
def identity_data(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """Every sample a flat colour that names it: 26 unlabeled, 10 labeled, 7 val (odd counts so
    that rank splits and padding are exercised)."""
    def sample(i: int, ext: str, labeled: bool) -> Sample:
        h, w = 30 + (i % 5) * 7, 40 + (i % 3) * 9
        image = T.identity_image(i, height=h, width=w)
        if labeled:
            return _labeled(f"i{i:03d}", image, np.full((h, w), i % 7, dtype=np.uint8), ext)
        return _unlabeled(f"i{i:03d}", image, ext)

    return write_dataset(tmp_path_factory.mktemp("identity"),
                         splits={"labeled": [sample(i, "png", True) for i in range(100, 110)],
                                 "unlabeled": [sample(i, "jpg" if i % 2 else "png", False) for i in range(26)],
                                 "val": [sample(i, "png", True) for i in range(150, 157)]},
                         class_names=CLASS_NAMES, palette=T.CLASS_PALETTE, foreground=[1, 2, 3],
                         source=SOURCE, shard_size=4)


@pytest.fixture()
def copy_of(tmp_path: Path):
    """Copy a fixture dataset to a private directory (for tests that corrupt it)."""
    import shutil

    def _copy(manifest: Manifest) -> Manifest:
        dst = tmp_path / "copy"
        shutil.copytree(manifest.root, dst)
        return Manifest.load(dst)

    return _copy
