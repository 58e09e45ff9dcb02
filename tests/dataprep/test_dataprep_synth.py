"""`dataprep synth`: official layouts, valid label values, determinism, context statistics."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataprep.synth import make_synthetic
from dataprep.synth.common import sample_rng
from dataprep.synth.voc import SCENES, SYNTH_CLASSES, render_voc_scene
from fastforec.labels import CITYSCAPES_LABELS, bit_palette
from tests.dataprep.conftest import CITY_TRAIN, CITY_VAL, SIZE, VOC_TRAIN, VOC_VAL, CliRunner, lines, read_png

CITYSCAPES_IDS = {label.id for label in CITYSCAPES_LABELS}


def test_voc_layout(voc_raw_session: Path) -> None:
    root = voc_raw_session
    sets = root / "ImageSets/Segmentation"
    trainaug, train, val = lines(sets / "trainaug.txt"), lines(sets / "train.txt"), lines(sets / "val.txt")
    assert len(trainaug) == VOC_TRAIN and len(val) == VOC_VAL and set(train) < set(trainaug)
    assert not set(trainaug) & set(val)
    for image_id in trainaug + val:
        jpg = root / "JPEGImages" / f"{image_id}.jpg"
        assert jpg.read_bytes()[:2] == b"\xff\xd8"
        assert Image.open(jpg).size == (SIZE[1], SIZE[0])
        aug = Image.open(root / "SegmentationClassAug" / f"{image_id}.png")
        assert aug.mode == "P" and aug.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
        assert aug.getpalette()[255 * 3:255 * 3 + 3] == list(bit_palette()[255])
        values = set(np.unique(np.asarray(aug)).tolist())
        assert values <= {0, 255, *SYNTH_CLASSES}
        assert (root / "SegmentationClass" / f"{image_id}.png").exists() == (image_id in set(train) | set(val))


def test_cityscapes_layout(city_raw_session: Path) -> None:
    images = sorted((city_raw_session / "leftImg8bit").glob("*/*/*_leftImg8bit.png"))
    assert len(images) == CITY_TRAIN + CITY_VAL
    seen: set[int] = set()
    for image in images:
        subset, city = image.parent.parent.name, image.parent.name
        assert image.name.startswith(f"{city}_") and subset in ("train", "val")
        label = city_raw_session / "gtFine" / subset / city / image.name.replace("_leftImg8bit", "_gtFine_labelIds")
        values = read_png(label)
        assert values.shape == SIZE and Image.open(image).mode == "RGB"
        seen |= set(np.unique(values).tolist())
    assert seen <= CITYSCAPES_IDS
    assert {7, 8, 11, 23, 26} <= seen  # road, sidewalk, building, sky, car
    assert seen & {0, 1, 2, 4, 5, 6, 9, 14, 18}, "some pixels must carry ids that map to 255"


def test_deterministic_from_seed(tmp_path: Path, voc_raw_session: Path) -> None:
    again = make_synthetic("voc", tmp_path / "a", num_train=VOC_TRAIN, num_val=VOC_VAL, size=SIZE, seed=0)
    other = make_synthetic("voc", tmp_path / "b", num_train=2, num_val=1, size=SIZE, seed=1)
    name = "JPEGImages/2007_000001.jpg"
    assert (again / name).read_bytes() == (voc_raw_session / name).read_bytes()
    assert (other / name).read_bytes() != (voc_raw_session / name).read_bytes()


def test_cli_parallel_matches_serial(tmp_path: Path, voc_raw_session: Path, cli: CliRunner) -> None:
    result = cli("synth", "--layout", "voc", "--out", tmp_path / "p", "--num-train", VOC_TRAIN,
                 "--num-val", VOC_VAL, "--size", f"{SIZE[0]}x{SIZE[1]}", "--seed", 0, "--workers", 2, "--quiet")
    assert result.code == 0
    for rel in ("JPEGImages/2007_000011.jpg", "SegmentationClass/2008_000003.png", "ImageSets/Segmentation/train.txt"):
        assert (tmp_path / "p" / rel).read_bytes() == (voc_raw_session / rel).read_bytes()


def test_cli_rejects_bad_size(cli: CliRunner, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("synth", "--layout", "voc", "--out", tmp_path, "--size", "big")
    assert exit_info.value.code == 2
    assert "'big' is not HxW" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--jpeg-quality", "500", "argument --jpeg-quality: must be an integer 1..100, got '500'"),
    ("--jpeg-quality", "-5", "argument --jpeg-quality: must be an integer 1..100, got '-5'"),
    ("--workers", "0", "argument --workers: must be an integer >= 1, got '0'"),
])
def test_cli_rejects_numbers_out_of_range(flag: str, value: str, message: str, cli: CliRunner, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("synth", "--layout", "voc", "--out", tmp_path / "x", flag, value)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_not_trivial_and_context() -> None:
    """Objects are textured (not one colour per class), and the scene kind shifts the class mix."""
    size = (120, 160)
    per_scene: dict[str, np.ndarray] = {s.name: np.zeros(256) for s in SCENES}
    spread = []
    for i in range(60):
        rng = sample_rng(3, f"x{i}")
        image, label = render_voc_scene(rng, size)
        scene = SCENES[int(sample_rng(3, f"x{i}").integers(len(SCENES)))].name
        per_scene[scene] += np.bincount(label.ravel(), minlength=256)
        for cls in SYNTH_CLASSES:
            pixels = image[label == cls].astype(float)
            if len(pixels) > 50:
                spread.append(pixels.std(axis=0).mean())
    assert np.median(spread) > 10.0  # intensity spread inside an object: texture, shading, parts
    car, bird = SYNTH_CLASSES[1], SYNTH_CLASSES[0]
    street = per_scene["street"] / per_scene["street"].sum()
    nature = per_scene["nature"] / per_scene["nature"].sum()
    assert street[car] > 2 * nature[car] and nature[bird] > 2 * street[bird]


def test_palette_png_roundtrip(voc_raw_session: Path) -> None:
    png = (voc_raw_session / "SegmentationClassAug/2007_000000.png").read_bytes()
    assert Image.open(io.BytesIO(png)).mode == "P"
    assert read_png(png).dtype == np.uint8
