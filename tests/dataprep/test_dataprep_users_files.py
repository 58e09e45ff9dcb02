"""dataprep and the user's files (issue 30, items 5 and 7): a non-empty --out it did not write is
refused (--force to allow), and a photo with an EXIF orientation is stored in the shards as
displayed, so that the training and evaluation decoders (DALI with adjust_orientation=False)
see the picture its mask was drawn on."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fastforec.config import config_from_dict
from fastforec.data import ValData
from fastforec.data.manifest import Manifest
from tests.dataprep.conftest import CliRunner, lines
from tests.shard_sets import shard_samples

EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6  # the viewer turns the stored pixels 90 degrees clockwise


def _voc(cli: CliRunner, root: Path, split: Path, out: Path, *extra: object):
    return cli("voc", "--root", root, "--split-dir", split, "--out", out, "--workers", 1, "--quiet", *extra)


def test_an_output_folder_of_someone_elses_files_is_refused(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                            cli: CliRunner) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    (out / "labeled-000000.tar").write_bytes(b"my own tar")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = _voc(cli, voc_raw, voc_split, out)
    assert result.code == 2, result.err
    assert (f"--out '{out}' is not empty and was not written by dataprep (it holds labeled-000000.tar, "
            f"manifest.json)") in result.err and "--force" in result.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing added, nothing replaced

    result = _voc(cli, voc_raw, voc_split, out, "--force")
    assert result.code == 0, result.err
    assert Manifest.load(out).num_classes == 21
    # from now on the folder is dataprep's: a re-run needs no --force and keeps its shards
    result = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1)
    assert result.code == 0 and "0 image(s) converted" in result.err, result.err


def test_new_empty_and_own_output_folders_need_no_force(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                        cli: CliRunner) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"finder")  # hidden files are not the user's data
    for out in (tmp_path / "new" / "shards", empty, empty):  # the last: a re-run over its own output
        result = _voc(cli, voc_raw, voc_split, out)
        assert result.code == 0, result.err
    assert (empty / ".DS_Store").read_bytes() == b"finder"


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


def _store_rotated(path: Path, shown: np.ndarray, **save: object) -> None:
    """Write ``shown`` the way a phone does: pixels stored turned, and the tag that turns them back."""
    Image.fromarray(np.rot90(shown)).save(path, exif=_exif(ROTATED_90_CW), **save)  # rot90: counter-clockwise


def _val_images(shards: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (image HxWx3 uint8, label HxW) of the val split, as the evaluation reads them (DALI)."""
    cfg = config_from_dict({"data": {"root": str(shards), "device": "cpu", "num_threads": 1}}).data
    manifest = Manifest.load(shards)
    keys = sorted(shard_samples(manifest, "val"))  # shards hold samples sorted by key
    batches = ValData(manifest, cfg, batch_size=1, rank=0, world_size=1, device="cpu")
    return {key: ((b["image"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), b["label"][0].numpy())
            for key, b in zip(keys, batches)}


def test_folder_stores_an_exif_rotated_photo_as_displayed(tmp_path: Path, cli: CliRunner) -> None:
    images, masks, split = (tmp_path / d for d in ("images", "masks", "split"))
    for d in (images, masks, split):
        d.mkdir()
    rng = np.random.default_rng(0)
    shown = rng.integers(0, 255, (56, 40, 3), dtype=np.uint8)  # as displayed: 40 wide, 56 high
    _store_rotated(images / "photo.jpg", shown, quality=95)
    mask = np.zeros((56, 40), np.uint8)
    mask[:20] = 1  # the top of the picture the user sees
    Image.fromarray(mask).save(masks / "photo.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(images / "other.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(masks / "other.png")
    (split / "labeled.txt").write_text("other\n")
    (split / "val.txt").write_text("photo\n")
    out = tmp_path / "shards"
    result = cli("folder", "--images", images, "--masks", masks, "--num-classes", 2, "--split-dir", split,
                 "--out", out, "--workers", 1, "--quiet")
    assert result.code == 0, result.err  # before: "label is 40x56 (WxH) but its image is 56x40"
    member = shard_samples(Manifest.load(out), "val")["photo"]
    with Image.open(io.BytesIO(member["png"])) as stored:
        assert stored.getexif().get(EXIF_ORIENTATION) in (None, 1)  # no turn left for a decoder to apply twice
    with Image.open(images / "photo.jpg") as original:
        want = np.asarray(ImageOps.exif_transpose(original).convert("RGB"))
    image, label = _val_images(out)["photo"]
    assert image.shape == (56, 40, 3) and np.array_equal(image, want)
    assert np.array_equal(label, mask)


@pytest.mark.parametrize("layout", ["voc", "cityscapes"])
def test_benchmark_conversions_store_exif_rotated_images_as_displayed(layout: str, voc_raw: Path, voc_split: Path,
                                                                      city_raw_session: Path,
                                                                      city_split_session: Path, tmp_path: Path,
                                                                      cli: CliRunner) -> None:
    if layout == "voc":
        root, split = voc_raw, voc_split
        key = lines(root / "ImageSets/Segmentation/val.txt")[0]
        path = root / "JPEGImages" / f"{key}.jpg"
        save: dict[str, object] = {"quality": 95}
    else:
        root = Path(shutil.copytree(city_raw_session, tmp_path / "cityscapes"))
        split = city_split_session
        path = sorted((root / "leftImg8bit" / "val").glob("*/*.png"))[0]
        key = path.name.removesuffix("_leftImg8bit.png")
        save = {}
    with Image.open(path) as im:
        shown = np.asarray(im.convert("RGB"))
    _store_rotated(path, shown, **save)  # the same picture, stored turned with its orientation tag
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = tmp_path / "shards"
    result = cli(layout, "--root", root, "--split-dir", split, "--out", out, "--workers", 1, "--quiet")
    assert result.code == 0, result.err
    image, _ = _val_images(out)[key]
    assert image.shape == shown.shape and np.array_equal(image, want)


@pytest.mark.parametrize("command", ["synth", "splits"])
def test_synth_and_splits_refuse_someone_elses_folder_and_rerun_over_their_own(
        command: str, voc_raw: Path, tmp_path: Path, cli: CliRunner) -> None:
    args = (["synth", "--layout", "voc", "--num-train", 4, "--num-val", 2, "--size", "48x48", "--quiet"]
            if command == "synth" else ["splits", "--root", voc_raw, "--layout", "voc", "--labeled", 2, "--seed", 0])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "labeled.txt").write_text("my own list\n")
    result = cli(*args, "--out", mine)
    assert result.code == 2 and f"--out '{mine}' is not empty and was not written by dataprep" in result.err
    assert [p.name for p in mine.iterdir()] == ["labeled.txt"] and (mine / "labeled.txt").read_text() == "my own list\n"
    assert cli(*args, "--out", mine, "--force").code == 0  # the user said so
    own = tmp_path / "own"
    assert cli(*args, "--out", own).code == 0
    assert cli(*args, "--out", own).code == 0, "a re-run over its own output must go ahead"
