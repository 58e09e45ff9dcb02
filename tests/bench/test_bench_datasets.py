"""The data sets the benchmarks generate: dataprep's synthetic VOC shards made through its
command line, and the textured JPEG set written directly in the manifest contract format."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastforec.bench.datasets import SHARDS_SUBDIR, make_bench_dataset, synthetic_voc_shards
from fastforec.data.manifest import Manifest
from fastforec.data.shard_reader import SplitReader, verify_shards
from fastforec.dataprep_cli import run_dataprep
from fastforec.errors import UserError


def test_synthetic_voc_shards_runs_synth_splits_and_voc(tmp_path: Path) -> None:
    shards = synthetic_voc_shards(tmp_path, num_train=6, num_labeled=2, num_val=2, size=(32, 40), seed=3)
    assert shards == tmp_path / SHARDS_SUBDIR
    manifest = Manifest.load(shards)
    assert manifest.dataset == "voc"
    counts = {split: manifest.split(split).num_samples for split in ("labeled", "unlabeled", "val")}
    assert counts == {"labeled": 2, "unlabeled": 4, "val": 2}
    labeled = (tmp_path / "splits" / "labeled.txt").read_text().split()
    assert len(labeled) == 2 and (tmp_path / "raw").is_dir()
    verify_shards(manifest, ["labeled", "unlabeled", "val"], sha256=True)


def test_a_failed_dataprep_command_is_a_user_error_quoting_dataprep(tmp_path: Path) -> None:
    missing, out = tmp_path / "no_such_tree", tmp_path / "splits"
    with pytest.raises(UserError) as caught:
        run_dataprep(["splits", "--root", missing, "--layout", "voc", "--labeled", 2, "--seed", 0, "--out", out])
    message = str(caught.value)
    assert message.startswith(f"`dataprep splits --root {missing}") and "(exit 2)" in message
    assert f"--root '{missing}' does not exist" in message  # dataprep's own line, not a traceback
    assert not out.exists()


def test_make_bench_dataset_writes_the_same_textured_samples_into_every_split(tmp_path: Path) -> None:
    manifest = make_bench_dataset(tmp_path / "tex", num_samples=3, height=30, width=40, seed=1)
    assert manifest.source == {"generator": "fastforec.bench.datasets"}
    verify_shards(manifest, ["labeled", "unlabeled", "val"], sha256=True)
    labeled = SplitReader(manifest, "labeled", with_labels=True)
    unlabeled = SplitReader(manifest, "unlabeled", with_labels=False)
    assert len(labeled) == len(unlabeled) == manifest.split("val").num_samples == 3
    assert [bytes(labeled.image_bytes(i)) for i in range(3)] == [bytes(unlabeled.image_bytes(i)) for i in range(3)]
