"""`dataprep synth --preset sslbench`: the dataset made to need unlabeled data, and its nested,
class-balanced labeled budgets (`dataprep splits --balanced`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataprep.cli import main
from dataprep.synth import sslbench
from tests.dataprep.conftest import CliRunner, lines

NUM_TRAIN, NUM_VAL, SIZE = 240, 12, "64x64"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sslbench") / "raw"
    assert main(["synth", "--layout", "voc", "--preset", "sslbench", "--out", str(root), "--num-train",
                 str(NUM_TRAIN), "--num-val", str(NUM_VAL), "--size", SIZE, "--quiet"]) == 0
    return root


def _budget(cli: CliRunner, root: Path, labeled: int, out: Path) -> tuple[list[str], list[str]]:
    result = cli("splits", "--root", root, "--layout", "voc", "--labeled", labeled, "--balanced", "--out", out)
    assert result.code == 0, result.err
    return lines(out / "labeled.txt"), lines(out / "unlabeled.txt")


def test_classes_told_apart_by_shape_with_shared_styles(tree: Path) -> None:
    meta = json.loads((tree / sslbench.METADATA_FILE).read_text())
    assert len(sslbench.SSLBENCH_CLASSES) >= 10
    class_styles = {int(c): s for c, s in meta["class_styles"].items()}
    assert set(class_styles) == set(sslbench.SSLBENCH_CLASSES)
    # several styles per class: appearance alone does not give the class away
    assert all(len(set(s)) == sslbench.STYLES_PER_CLASS for s in class_styles.values())
    users = Counter(style for styles in class_styles.values() for style in styles)
    # the signature styles are their class's own; every other style serves several classes
    signatures = {styles[0] for styles in class_styles.values()}
    assert len(signatures) == len(class_styles) and all(users[s] == 1 for s in signatures)
    shared = {s: n for s, n in users.items() if s not in signatures}
    assert len(shared) == sslbench.STYLE_POOL_SIZE - len(signatures) and min(shared.values()) >= 2
    # every label value is background, one of the 10 classes or the void band; the metadata matches the masks
    for image_id, objects in list(meta["images"].items())[:40]:
        mask = np.asarray(Image.open(tree / "SegmentationClass" / f"{image_id}.png"))
        assert set(np.unique(mask).tolist()) <= {0, 255, *sslbench.SSLBENCH_CLASSES}
        # the metadata lists the objects left visible; the void band may swallow a sliver entirely
        assert set(np.unique(mask).tolist()) - {0, 255} <= {c for c, _ in objects}
        assert Image.open(tree / "JPEGImages" / f"{image_id}.jpg").size == (64, 64)


def test_balanced_classes_and_sizes(tree: Path) -> None:
    meta = json.loads((tree / sslbench.METADATA_FILE).read_text())
    train = lines(tree / "ImageSets/Segmentation/trainaug.txt")
    assert len(train) == NUM_TRAIN and len(lines(tree / "ImageSets/Segmentation/val.txt")) == NUM_VAL
    # every training image has a mask (any budget can be labeled), 2-4 objects drawn per image
    assert lines(tree / "ImageSets/Segmentation/train.txt") == train
    counts = Counter(c for i in train for c, _ in meta["images"][i])
    assert set(counts) == set(sslbench.SSLBENCH_CLASSES) and max(counts.values()) / min(counts.values()) < 1.5
    assert all(1 <= len(meta["images"][i]) <= max(sslbench.OBJECT_COUNTS) for i in train)
    # the study's validation set is at least 1500 images (the ablate command sets it; see docs/results.md)
    assert sslbench.MIN_STUDY_VAL_IMAGES >= 1500


def test_budgets_nested_balanced_and_under_covering(tree: Path, tmp_path: Path, cli: CliRunner) -> None:
    meta = json.loads((tree / sslbench.METADATA_FILE).read_text())
    small, small_unlabeled = _budget(cli, tree, 24, tmp_path / "b24")
    large, _ = _budget(cli, tree, 96, tmp_path / "b96")
    everything, nothing = _budget(cli, tree, NUM_TRAIN, tmp_path / "all")
    assert set(small) < set(large) and len(small) == 24 and len(large) == 96
    assert not set(small) & set(small_unlabeled) and len(small) + len(small_unlabeled) == NUM_TRAIN
    assert len(everything) == NUM_TRAIN and nothing == []
    # class-balanced: every class labeled, object counts within a small spread
    per_class = Counter(c for i in small for c in {c for c, _ in meta["images"][i]})
    assert set(per_class) == set(sslbench.SSLBENCH_CLASSES) and max(per_class.values()) - min(per_class.values()) <= 3
    # the small budget sees fewer (class, style) pairs than the unlabeled set shows
    pairs = lambda ids: {(c, s) for i in ids for c, s in meta["images"][i]}  # noqa: E731
    assert len(pairs(small)) < len(pairs(small_unlabeled))
    assert pairs(small) < pairs(small_unlabeled) | pairs(small)


def test_balanced_needs_an_sslbench_tree(voc_raw_session: Path, tmp_path: Path, cli: CliRunner) -> None:
    result = cli("splits", "--root", voc_raw_session, "--layout", "voc", "--labeled", 4, "--balanced",
                 "--out", tmp_path / "x")
    assert result.code == 2 and "sslbench.json" in result.err and "--preset sslbench" in result.err
    assert not (tmp_path / "x").exists()


def test_a_random_partition_needs_a_seed(voc_raw_session: Path, tmp_path: Path, cli: CliRunner) -> None:
    result = cli("splits", "--root", voc_raw_session, "--layout", "voc", "--labeled", 4, "--out", tmp_path / "x")
    assert result.code == 2 and "--seed is required for a random partition" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "x").exists()
