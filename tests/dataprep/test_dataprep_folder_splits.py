"""`dataprep folder` (custom datasets, unlabeled images without masks), `dataprep splits`,
and the `tests.shard_sets.make_shards` helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastforec.data.manifest import Manifest
from tests.dataprep.conftest import CliRunner, lines, read_png
from tests.shard_sets import make_shards, shard_samples

NUM_CLASSES = 4


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """6 masked images (PNG and JPEG, one with dots in its name), 2 images without masks, and
    a separate directory of 3 unlabeled images."""
    rng = np.random.default_rng(0)
    for d in ("images", "masks", "extra"):
        (tmp_path / d).mkdir()
    names = ["a", "b", "c", "d", "e", "img.v2"]
    for i, name in enumerate(names + ["nomask1", "nomask2"]):
        image = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"{name}.{'png' if i % 2 else 'jpg'}")
        if name in names:
            mask = rng.integers(0, NUM_CLASSES, size=(20, 24)).astype(np.uint8)
            mask[0, :] = 255
            Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(tmp_path / "extra" / f"u{i}.jpg")
    return tmp_path


def test_folder_random_partition(folder: Path, cli: CliRunner) -> None:
    out = folder / "out"
    result = cli("folder", "--images", folder / "images", "--masks", folder / "masks", "--unlabeled", folder / "extra",
                 "--num-classes", NUM_CLASSES, "--class-names", "bg", "x", "y", "z", "--labeled", 2, "--num-val", 1,
                 "--seed", 3, "--out", out, "--workers", 1, "--quiet")
    assert result.code == 0, result.err
    m = Manifest.load(out)
    assert m.class_names == ("bg", "x", "y", "z") and m.foreground_classes == (1, 2, 3) and m.dataset == "folder"
    labeled, unlabeled, val = (shard_samples(m, s) for s in ("labeled", "unlabeled", "val"))
    assert (len(labeled), len(val)) == (2, 1)
    assert len(unlabeled) == 3 + 2 + 3  # masked leftovers, images without masks, the extra directory
    assert {"nomask1", "nomask2", "u0", "u1", "u2"} <= set(unlabeled)
    assert "img_v2" in set(labeled) | set(unlabeled) | set(val)  # dots replaced: keys never contain dots
    for key, sample in {**labeled, **val}.items():
        stem = "img.v2" if key == "img_v2" else key
        np.testing.assert_array_equal(read_png(sample["label.png"]), read_png(folder / "masks" / f"{stem}.png"))
    assert all("label.png" not in s for s in unlabeled.values())


def test_folder_split_dir_and_bad_mask_value(folder: Path, cli: CliRunner) -> None:
    split = folder / "split"
    split.mkdir()
    (split / "labeled.txt").write_text("a\nb.jpg\n")
    (split / "unlabeled.txt").write_text("u1\nnomask1")
    (split / "val.txt").write_text("c\n")
    args = ["folder", "--images", folder / "images", "--masks", folder / "masks", "--unlabeled", folder / "extra",
            "--num-classes", NUM_CLASSES, "--split-dir", split, "--workers", 1, "--quiet"]
    assert cli(*args, "--out", folder / "out").code == 0
    m = Manifest.load(folder / "out")
    assert sorted(shard_samples(m, "labeled")) == ["a", "b"] and sorted(shard_samples(m, "unlabeled")) == ["nomask1",
                                                                                                           "u1"]
    mask = read_png(folder / "masks" / "c.png").copy()
    mask[1, 1] = NUM_CLASSES
    Image.fromarray(mask).save(folder / "masks" / "c.png")
    result = cli(*args, "--out", folder / "out2")
    assert result.code == 2 and "masks/c.png" in result.err and f"[{NUM_CLASSES}] are neither a class id" in result.err


def test_splits_cli(voc_raw_session: Path, city_raw_session: Path, tmp_path: Path, cli: CliRunner) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert cli("splits", "--root", voc_raw_session, "--layout", "voc", "--labeled", 3, "--seed", seed,
                   "--out", out).code == 0
    assert (a / "labeled.txt").read_bytes() == (b / "labeled.txt").read_bytes()
    assert (a / "labeled.txt").read_bytes() != (c / "labeled.txt").read_bytes()
    classic = set(lines(voc_raw_session / "ImageSets/Segmentation/train.txt"))
    trainaug = set(lines(voc_raw_session / "ImageSets/Segmentation/trainaug.txt"))
    labeled, unlabeled = set(lines(a / "labeled.txt")), set(lines(a / "unlabeled.txt"))
    assert len(labeled) == 3 and labeled <= classic and not labeled & unlabeled and labeled | unlabeled == trainaug
    assert cli("splits", "--root", city_raw_session, "--layout", "cityscapes", "--labeled", 2, "--seed", 0,
               "--out", tmp_path / "city").code == 0
    paths = lines(tmp_path / "city" / "labeled.txt")
    assert len(paths) == 2 and all(p.startswith("leftImg8bit/train/") and (city_raw_session / p).is_file()
                                   for p in paths)
    too_many = cli("splits", "--root", voc_raw_session, "--layout", "voc", "--labeled", 99, "--seed", 0,
                   "--out", tmp_path / "x")
    assert too_many.code == 2 and "--labeled 99 is not in 1..6" in too_many.err


def test_make_shards(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, num_train=10, num_labeled=3, num_val=2, size=(32, 40), seed=1)
    m = Manifest.load(shards)
    assert (m.split("labeled").num_samples, m.split("unlabeled").num_samples, m.split("val").num_samples) == (3, 7, 2)
    assert json.loads((shards / "manifest.json").read_text())["dataset"] == "voc"
    city = make_shards(tmp_path / "city", layout="cityscapes", num_train=4, num_labeled=2, num_val=1, size=(32, 64))
    assert Manifest.load(city).num_classes == 19
