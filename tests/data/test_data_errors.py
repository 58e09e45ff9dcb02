"""A corrupt or missing shard is named in the error, at construction or when it is read."""

from __future__ import annotations

import pytest

from fastforec.config import DataConfig
from fastforec.data import TrainData, ValData
from fastforec.data.manifest import ManifestError
from fastforec.data.shard_reader import ShardError, SplitReader


def _train(manifest) -> TrainData:
    return TrainData(manifest, DataConfig(crop_size=32, batch_size=4), rank=0, world_size=1, seed=0,
                     with_unlabeled=True, device="cpu")


def _drain(data: TrainData) -> None:
    for epoch in range(2):
        for _ in range(data.steps_per_epoch):
            data.next_batch()


def test_missing_shard_is_named(identity_data, copy_of):
    m = copy_of(identity_data)
    victim = m.shard_paths("unlabeled")[2]
    victim.unlink()
    with pytest.raises(ManifestError, match=victim.name):
        _train(m)


def test_truncated_shard_is_named(identity_data, copy_of):
    m = copy_of(identity_data)
    victim = m.shard_paths("labeled")[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=f"{victim.name}.*truncated"):
        _train(m)


def test_overwritten_member_header_is_named(identity_data, copy_of):
    m = copy_of(identity_data)
    victim = m.shard_paths("unlabeled")[3]
    member = SplitReader(m, "unlabeled", with_labels=False).samples[13].image  # 4 per shard: the 2nd of shard 3
    raw = bytearray(victim.read_bytes())
    raw[member.offset - 512: member.offset - 412] = b"\xff" * 100
    victim.write_bytes(bytes(raw))
    data = _train(m)
    with pytest.raises(ShardError, match=f"{victim.name}.*corrupt"):
        _drain(data)


def test_unreadable_image_header_is_named(identity_data, copy_of):
    m = copy_of(identity_data)
    victim = m.shard_paths("unlabeled")[0]
    member = SplitReader(m, "unlabeled", with_labels=False).samples[2].image
    raw = bytearray(victim.read_bytes())
    raw[member.offset: member.offset + member.size] = b"\x00" * member.size
    victim.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=f"{victim.name}.*{member.name}"):
        _drain(_train(m))


def test_garbage_jpeg_body_is_named(identity_data, copy_of):
    """Headers intact, entropy-coded data garbage: DALI's decoder fails on the batch and the
    error names the shard and the sample."""
    m = copy_of(identity_data)
    victim = m.shard_paths("unlabeled")[1]
    member = SplitReader(m, "unlabeled", with_labels=False).samples[5].image  # odd id: a JPEG
    assert member.name.endswith(".jpg")
    keep = 200  # SOI, quantisation and Huffman tables, SOF: the size still parses
    raw = bytearray(victim.read_bytes())
    raw[member.offset + keep: member.offset + member.size] = b"\x17" * (member.size - keep)
    victim.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=f"{victim.name}.*{member.name}.*cannot be decoded"):
        _drain(_train(m))


def test_corrupt_val_shard_is_named(identity_data, copy_of):
    m = copy_of(identity_data)
    victim = m.shard_paths("val")[1]
    member = SplitReader(m, "val", with_labels=True).samples[5].image
    raw = bytearray(victim.read_bytes())
    raw[member.offset + 16: member.offset + member.size] = b"\x17" * (member.size - 16)
    victim.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=victim.name):
        list(ValData(m, DataConfig(), batch_size=1, rank=0, world_size=1, device="cpu"))


def test_a_file_or_a_damaged_manifest_given_as_the_dataset_is_named(tmp_path):
    from pathlib import Path

    from fastforec.data.manifest import Manifest

    cfg = Path(tmp_path) / "tiny.json"
    cfg.write_text("{}")
    with pytest.raises(ManifestError, match=r"'.*tiny.json' is a file, not a dataset directory; give the directory"):
        Manifest.load(cfg)
    (tmp_path / "manifest.json").write_text('{"format_version": ')
    with pytest.raises(ManifestError, match="is its manifest.json, not a dataset directory"):
        Manifest.load(tmp_path / "manifest.json")
    with pytest.raises(ManifestError, match=r"is not valid JSON \(.*\); re-run the dataprep command that made"):
        Manifest.load(tmp_path)
