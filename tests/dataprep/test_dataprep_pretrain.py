"""`dataprep synth --preset pretrain`: the source sslbench's encoder is pretrained on (issue 34),
deterministic, every image labeled, and disjoint from sslbench in classes, silhouettes and textures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataprep.cli import main
from dataprep.synth import pretrain, sslbench
from dataprep.synth import voc as scenes
from fastforec.labels import IGNORE_INDEX, VOC_CLASS_NAMES
from tests.dataprep.conftest import lines

NUM_TRAIN, NUM_VAL, SIZE = 24, 4, "48x48"


def _synth(out: Path, *, seed: int = 0, workers: int = 1) -> Path:
    assert main(["synth", "--layout", "voc", "--preset", "pretrain", "--out", str(out), "--num-train", str(NUM_TRAIN),
                 "--num-val", str(NUM_VAL), "--size", SIZE, "--seed", str(seed), "--workers", str(workers),
                 "--quiet"]) == 0
    return out


def _digest(root: Path) -> dict[str, str]:
    """Every file of a tree (dataprep's own marker directory aside) by relative path -> sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.relative_to(root).parts[0].startswith(".")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("pretrain") / "raw")


def test_same_seed_same_bytes_other_seed_other_images(tree: Path, tmp_path: Path) -> None:
    again = _digest(_synth(tmp_path / "again", workers=2))  # the worker count does not matter either
    assert again == _digest(tree) and len(again) > 2 * (NUM_TRAIN + NUM_VAL)
    other = _digest(_synth(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    images = [k for k in other if k.startswith("JPEGImages/")]
    assert all(other[k] != again[k] for k in images)


def test_every_image_labeled_with_pretraining_classes_only(tree: Path) -> None:
    train = lines(tree / "ImageSets/Segmentation/trainaug.txt")
    assert len(train) == NUM_TRAIN and lines(tree / "ImageSets/Segmentation/train.txt") == train
    assert len(lines(tree / "ImageSets/Segmentation/val.txt")) == NUM_VAL
    seen: set[int] = set()
    for image_id in train:
        mask = np.asarray(Image.open(tree / "SegmentationClass" / f"{image_id}.png"))
        values = set(np.unique(mask).tolist())
        assert values <= {0, IGNORE_INDEX, *pretrain.PRETRAIN_CLASSES}, image_id
        seen |= values - {0, IGNORE_INDEX}
        assert Image.open(tree / "JPEGImages" / f"{image_id}.jpg").size == (48, 48)
    assert len(seen) >= len(pretrain.PRETRAIN_CLASSES) // 2  # 24 images of 1-4 objects show most classes


def test_disjoint_from_sslbench() -> None:
    # classes: the 10 VOC classes sslbench does not use, told by names and ids
    assert not set(pretrain.PRETRAIN_CLASSES) & set(sslbench.SSLBENCH_CLASSES)
    assert not set(pretrain.CLASS_SHAPES) & set(sslbench.CLASS_SHAPES)
    assert set(pretrain.PRETRAIN_CLASSES) | set(sslbench.SSLBENCH_CLASSES) == set(range(1, len(VOC_CLASS_NAMES)))
    # silhouettes: no shape builder of sslbench (or of the scenes preset, whose bird/car/cat sslbench uses)
    others = set(sslbench.CLASS_SHAPES.values()) | {d.parts for d in scenes.DESIGNS.values()}
    assert not set(pretrain.CLASS_SHAPES.values()) & others
    # textures: other pattern kinds, so no style of one pool is a style of the other
    assert not set(pretrain.PATTERN_KINDS) & set(sslbench.PATTERN_KINDS)
    for seed in range(4):
        ours = pretrain.style_table(seed)
        theirs = sslbench.style_table(seed).styles
        assert len(ours) == pretrain.STYLE_POOL_SIZE and {s.kind for s in ours} == set(pretrain.PATTERN_KINDS)
        assert not {s.kind for s in ours} & {s.kind for s in theirs}
        assert not {(s.colour_a, s.colour_b) for s in ours} & {(s.colour_a, s.colour_b) for s in theirs}


def test_every_silhouette_and_texture_draws() -> None:
    rng = np.random.default_rng(0)
    for name, parts in pretrain.CLASS_SHAPES.items():
        drawn = parts(rng)
        # about the [-1, 1] box that OBJECT_EXTENT scales (a raised head may reach a little beyond it)
        assert drawn and all(np.abs(p.polygon).max() <= 1.2 for p in drawn), name
    for style in pretrain.style_table(0):
        img = pretrain.LOOK.paint(style, 20, 30, 48, rng, contrast=1.0)
        assert img.shape == (20, 30, 3) and 0.0 <= img.min() and img.max() <= 1.0
        assert img.std() > 0.0, style.kind  # a pattern, not a flat colour


def test_unknown_preset_is_refused_with_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["synth", "--layout", "voc", "--preset", "imagenet", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "pretrain" in capsys.readouterr().err
    assert main(["synth", "--layout", "cityscapes", "--preset", "pretrain", "--out", str(tmp_path / "y"),
                 "--quiet"]) == 2
    assert "--preset pretrain exists for --layout voc only" in capsys.readouterr().err
