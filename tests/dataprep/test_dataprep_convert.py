"""Conversion of synthetic VOC and Cityscapes trees: the shards hold exactly the source data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dataprep_tables import OFFICIAL_TRAIN_IDS

from dataprep.scan import read_samples
from fastforec.data.manifest import Manifest
from tests.dataprep.conftest import (
    CITY_LABELED,
    CITY_TRAIN,
    CITY_VAL,
    SIZE,
    VOC_LABELED,
    VOC_TRAIN,
    VOC_VAL,
    CliRunner,
    lines,
    read_png,
)
from tests.shard_sets import shard_samples


@pytest.fixture(scope="module")
def voc_shards(voc_raw_session: Path, voc_split_session: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dataprep.cli import main

    out = tmp_path_factory.mktemp("voc_shards")
    assert main(["voc", "--root", str(voc_raw_session), "--split-dir", str(voc_split_session), "--out", str(out),
                 "--workers", "1", "--shard-samples", "3", "--quiet"]) == 0
    return out


def test_voc_manifest(voc_shards: Path, voc_split_session: Path) -> None:
    m = Manifest.load(voc_shards)
    assert (m.dataset, m.num_classes, m.ignore_index) == ("voc", 21, 255)
    assert m.foreground_classes == tuple(range(1, 21)) and m.class_names[15] == "person"
    assert m.palette[1] == (128, 0, 0)
    counts = {split: m.split(split).num_samples for split in ("labeled", "unlabeled", "val")}
    assert counts == {"labeled": VOC_LABELED, "unlabeled": VOC_TRAIN - VOC_LABELED, "val": VOC_VAL}
    assert [s.file for s in m.split("unlabeled").shards] == [f"unlabeled-{i:06d}.tar" for i in range(3)]
    assert [s.num_samples for s in m.split("unlabeled").shards] == [3, 3, 2]
    for split in ("labeled", "unlabeled", "val"):
        m.check_files(split)
    assert sorted(shard_samples(m, "labeled")) == sorted(lines(voc_split_session / "labeled.txt"))


def test_voc_bytes_and_labels_equal_source(voc_shards: Path, voc_raw_session: Path) -> None:
    m = Manifest.load(voc_shards)
    for split in ("labeled", "val"):
        label_dir = "SegmentationClass"  # classic partition, and val always
        for key, sample in shard_samples(m, split).items():
            assert set(sample) == {"jpg", "label.png"}
            assert sample["jpg"] == (voc_raw_session / "JPEGImages" / f"{key}.jpg").read_bytes()  # not re-encoded
            label = Image.open(io.BytesIO(sample["label.png"]))
            assert label.mode == "L"
            np.testing.assert_array_equal(np.asarray(label), read_png(voc_raw_session / label_dir / f"{key}.png"))
    for key, sample in shard_samples(m, "unlabeled").items():
        assert set(sample) == {"jpg"}, key


def test_cityscapes_labels_are_train_ids(city_raw_session: Path, city_split_session: Path, tmp_path: Path,
                                         cli: CliRunner) -> None:
    out = tmp_path / "out"
    result = cli("cityscapes", "--root", city_raw_session, "--split-dir", city_split_session, "--out", out,
                 "--workers", 1)
    assert result.code == 0, result.err
    assert "images/s" in result.err
    m = Manifest.load(out)
    assert (m.num_classes, m.foreground_classes) == (19, (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18))
    assert m.split("labeled").num_samples == CITY_LABELED and m.split("val").num_samples == CITY_VAL
    assert m.split("unlabeled").num_samples == CITY_TRAIN - CITY_LABELED
    lut = np.array([OFFICIAL_TRAIN_IDS.get(i, 255) for i in range(256)], np.uint8)
    checked = 0
    for split, subset in (("labeled", "train"), ("val", "val")):
        for key, sample in shard_samples(m, split).items():
            city = key.split("_")[0]
            image = city_raw_session / "leftImg8bit" / subset / city / f"{key}_leftImg8bit.png"
            ids = read_png(city_raw_session / "gtFine" / subset / city / f"{key}_gtFine_labelIds.png")
            assert sample["png"] == image.read_bytes()
            np.testing.assert_array_equal(read_png(sample["label.png"]), lut[ids])
            checked += 1
    assert checked == CITY_LABELED + CITY_VAL


def test_cityscapes_jpg_option(city_raw_session: Path, city_split_session: Path, tmp_path: Path,
                               cli: CliRunner) -> None:
    """--image-format jpg re-encodes the training splits faithfully; val keeps the original PNG
    bytes, so mIoU is measured on the benchmark's own pixels."""
    out = tmp_path / "out"
    assert cli("cityscapes", "--root", city_raw_session, "--split-dir", city_split_session, "--out", out,
               "--image-format", "jpg", "--workers", 1, "--quiet").code == 0
    m = Manifest.load(out)
    assert m.source["image_format"] == "jpg" and m.source["val_image_format"] == "png"
    originals = {p.name.split("_leftImg8bit")[0]: np.asarray(Image.open(p)).astype(int)
                 for p in (city_raw_session / "leftImg8bit/train").glob("*/*.png")}
    labeled = shard_samples(m, "labeled")
    assert labeled
    for key, sample in labeled.items():
        assert "png" not in sample
        decoded = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        assert decoded.shape == originals[key].shape
        errors = {k: np.abs(decoded - o).mean() for k, o in originals.items() if o.shape == decoded.shape}
        # a faithful re-encode of this image: far closer to it than to any other image
        assert errors[key] < 0.25 * min(e for k, e in errors.items() if k != key)
    val = shard_samples(m, "val")
    assert len(val) == CITY_VAL
    for key, sample in val.items():
        assert "jpg" not in sample
        path = next((city_raw_session / "leftImg8bit/val").glob(f"*/{key}_leftImg8bit.png"))
        assert sample["png"] == path.read_bytes()


def test_parallel_conversion_is_byte_identical(voc_shards: Path, voc_raw_session: Path, voc_split_session: Path,
                                               tmp_path: Path, cli: CliRunner) -> None:
    out = tmp_path / "out"
    assert cli("voc", "--root", voc_raw_session, "--split-dir", voc_split_session, "--out", out, "--workers", 2,
               "--shard-samples", 3, "--quiet").code == 0
    assert (out / "manifest.json").read_bytes() == (voc_shards / "manifest.json").read_bytes()


def test_dali_reads_shards_with_index(voc_shards: Path, voc_raw_session: Path) -> None:
    """DALI's own webdataset reader, on the CPU, with our index files."""
    from nvidia.dali import fn, pipeline_def, types

    m = Manifest.load(voc_shards)

    @pipeline_def(batch_size=VOC_VAL, num_threads=1, device_id=None)
    def pipe():
        jpg, label = fn.readers.webdataset(paths=[str(p) for p in m.shard_paths("val")],
                                           index_paths=[str(p) for p in m.index_paths("val")],
                                           ext=["jpg", "label.png"], missing_component_behavior="error")
        return jpg, fn.decoders.image(jpg, output_type=types.RGB), fn.decoders.image(label, output_type=types.GRAY)

    p = pipe()
    p.build()
    raw, images, labels = p.run()
    keys = sorted(lines(voc_raw_session / "ImageSets/Segmentation/val.txt"))  # shards hold samples sorted by id
    for i, key in enumerate(keys):
        assert bytes(np.asarray(raw[i])) == (voc_raw_session / "JPEGImages" / f"{key}.jpg").read_bytes()
        assert np.asarray(images[i]).shape == (*SIZE, 3)
        np.testing.assert_array_equal(np.asarray(labels[i])[..., 0],
                                      read_png(voc_raw_session / "SegmentationClass" / f"{key}.png"))


def test_webdataset_library_reads_shards(voc_shards: Path) -> None:
    import webdataset as wds

    m = Manifest.load(voc_shards)
    keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in m.shard_paths("unlabeled")], shardshuffle=False)]
    assert len(keys) == VOC_TRAIN - VOC_LABELED and len(set(keys)) == len(keys)


def test_scan_reads_offsets_like_the_index(voc_shards: Path) -> None:
    samples, error = read_samples(voc_shards / "val-000000.tar")
    assert error is None
    first = (voc_shards / "val-000000.idx").read_text().splitlines()[1].split()
    assert [first[0], int(first[1]), int(first[2])] == [samples[0][1][0].ext, samples[0][1][0].offset,
                                                        samples[0][1][0].size]


def test_the_bar_and_the_summary_give_the_same_rate(voc_raw_session: Path, voc_split_session: Path, tmp_path: Path,
                                                    cli) -> None:
    """Both are images over the conversion's own time (rich's windowed speed read 25x too high)."""
    import re

    result = cli("voc", "--root", voc_raw_session, "--split-dir", voc_split_session, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    summary = re.search(r"(\d+) image\(s\) converted in ([\d.]+) s \(([\d.,e+-]+) images/s\), ([\d.]+) s in all",
                        result.err)
    assert summary, result.err
    n, seconds, rate = int(summary[1]), float(summary[2]), float(summary[3].replace(",", ""))
    assert n == VOC_TRAIN + VOC_VAL and rate == pytest.approx(n / seconds, rel=0.01)  # both to 3 significant digits
    bar = re.findall(r"([\d.,]+) img/s", result.err)
    # the bar's last refresh and the summary read the clock at different moments: on a loaded
    # machine they differ by tens of percent, while the bug this guards against was 25x
    assert bar and 0.5 <= float(bar[-1].replace(",", "")) / rate <= 2.0
