"""The pipelines read what dataprep writes (VOC and Cityscapes layouts)."""

from __future__ import annotations

import pytest
import torch

from fastforec.config import DataConfig
from fastforec.data import TrainData, ValData
from fastforec.data.manifest import Manifest
from fastforec.evaluate import resolve_eval_mode


@pytest.mark.parametrize("layout", ["voc", "cityscapes"])
def test_train_and_val_on_dataprep_shards(tmp_path, layout):
    from tests.shard_sets import make_shards

    manifest = Manifest.load(make_shards(tmp_path, layout=layout, num_train=12, num_labeled=4, num_val=3,
                                         size=(48, 64) if layout == "voc" else (32, 64)))
    cfg = DataConfig(crop_size=40, batch_size=4)
    train = TrainData(manifest, cfg, rank=0, world_size=1, seed=0, with_unlabeled=True, device="cpu")
    assert train.steps_per_epoch == 2
    labeled, unlabeled = train.next_batch()
    assert labeled["image"].shape == (4, 3, 40, 40) and unlabeled["strong"].shape == (4, 3, 40, 40)
    classes = set(labeled["label"].unique().tolist())
    assert classes <= set(range(manifest.num_classes)) | {255} and classes - {255}
    val = ValData(manifest, cfg, batch_size=1, rank=0, world_size=1, device="cpu")
    assert resolve_eval_mode("auto", manifest.dataset) == ("sliding" if layout == "cityscapes" else "whole")
    batches = list(val)
    assert len(batches) == len(val) == 3
    assert all(b["label"].dtype == torch.int64 and b["image"].shape[-2:] == b["label"].shape[-2:] for b in batches)
