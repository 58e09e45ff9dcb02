"""`dataprep verify` and `dataprep inspect` on good and damaged shard directories."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastforec.data.shard_writer import Sample, write_shard
from tests.dataprep.conftest import VOC_LABELED, VOC_TRAIN, VOC_VAL, CliRunner


@pytest.fixture(scope="module")
def good_shards(voc_raw_session: Path, voc_split_session: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dataprep.cli import main

    out = tmp_path_factory.mktemp("good")
    assert main(["voc", "--root", str(voc_raw_session), "--split-dir", str(voc_split_session), "--out", str(out),
                 "--workers", "1", "--shard-samples", "3", "--quiet"]) == 0
    return out


@pytest.fixture
def shards(good_shards: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good_shards, tmp_path / "shards"))


def test_verify_ok(good_shards: Path, cli: CliRunner) -> None:
    result = cli("verify", good_shards, "--workers", 2)
    assert result.code == 0, result.err
    assert f"OK (7 shards, {VOC_TRAIN + VOC_VAL} samples)" in result.out


def test_flipped_byte(shards: Path, cli: CliRunner) -> None:
    path = shards / "unlabeled-000001.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x01  # inside the first image's JPEG data
    path.write_bytes(bytes(data))
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1
    assert "unlabeled-000001.tar: sha256" in result.err and "does not match the manifest" in result.err
    assert "1 problem(s)" in result.err


def test_deleted_shard(shards: Path, cli: CliRunner) -> None:
    (shards / "val-000001.tar").unlink()
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1 and "val-000001.tar: file is missing" in result.err


def test_bad_label_value_names_the_sample(shards: Path, cli: CliRunner) -> None:
    """A shard that hashes fine but holds a label value outside the classes: the content checks
    find it, naming shard and key."""
    name = "val-000000"
    with tarfile.open(shards / f"{name}.tar") as tar:  # reuse a real JPEG from the shard
        jpg = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg"))
        size = Image.open(io.BytesIO(jpg)).size
    label = np.zeros((size[1], size[0]), np.uint8)
    label[3, 4] = 42
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    written = write_shard(shards / f"{name}.tar", [Sample(key="evil_1", image=jpg, image_ext="jpg",
                                                         label=buf.getvalue())])
    manifest = json.loads((shards / "manifest.json").read_text())
    entry = manifest["splits"]["val"]["shards"][0]
    entry["sha256"] = written.sha256
    entry["num_samples"] = 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1
    assert f"{name}.tar: sample 'evil_1': label values [42] are neither a class id (0..20) nor 255" in result.err


def test_index_mismatch(shards: Path, cli: CliRunner) -> None:
    shutil.copy(shards / "unlabeled-000000.idx", shards / "unlabeled-000001.idx")
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1 and "unlabeled-000001.idx" in result.err and "index does not match" in result.err


def test_no_manifest(tmp_path: Path, cli: CliRunner) -> None:
    result = cli("verify", tmp_path, "--workers", 1)
    assert result.code == 1 and "manifest.json" in result.err and "does not exist" in result.err


def test_inspect(good_shards: Path, cli: CliRunner) -> None:
    result = cli("inspect", good_shards, "--workers", 1)
    assert result.code == 0
    for text in ("labeled", "unlabeled", "val", "person", "(ignore)", "40x56"):
        assert text in result.out
    row = next(line for line in result.out.splitlines() if "unlabeled" in line)
    assert f" {VOC_TRAIN - VOC_LABELED} " in row
    assert str(VOC_VAL) in next(line for line in result.out.splitlines() if line.strip("│ ").startswith("val"))


def test_wrong_split_count_is_a_problem(shards: Path, cli: CliRunner) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["unlabeled"]["num_samples"] += 1  # the shards' own counts are untouched
    (shards / "manifest.json").write_text(json.dumps(manifest))
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1
    n = VOC_TRAIN - VOC_LABELED
    assert f"split 'unlabeled' says num_samples={n + 1} but its shards hold {n}" in result.err


def test_wrong_shard_size_is_a_problem(shards: Path, cli: CliRunner) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    shard = manifest["splits"]["val"]["shards"][0]
    assert shard["size"] == (shards / shard["file"]).stat().st_size  # dataprep records it
    shard["size"] += 512
    (shards / "manifest.json").write_text(json.dumps(manifest))
    result = cli("verify", shards, "--workers", 1)
    assert result.code == 1
    assert f"{shard['file']}: is {shard['size'] - 512} bytes, the manifest says {shard['size']}" in result.err
