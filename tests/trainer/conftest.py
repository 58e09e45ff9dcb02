"""Shared fixture of the trainer tests: a tiny shard dataset made by dataprep."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.shard_sets import make_shards

    return make_shards(tmp_path_factory.mktemp("shards"), layout="voc", num_train=24, num_labeled=8, num_val=4,
                       size=(64, 80), seed=0)


@pytest.fixture(scope="session")
def city_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cityscapes-layout shards of 64 x 128 images (sliding-window evaluation)."""
    from tests.shard_sets import make_shards

    return make_shards(tmp_path_factory.mktemp("city"), layout="cityscapes", num_train=4, num_labeled=2, num_val=2,
                       size=(64, 128), seed=1)
