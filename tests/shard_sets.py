"""Shard sets for the tests, importable from every test folder as ``tests.shard_sets``
(pyproject's pytest ``pythonpath`` puts the repository root on ``sys.path``).

* :func:`make_shards` - dataprep's own path in-process: a synthetic raw tree, a partition and
  its conversion; for tests of whatever reads real dataprep output.
* :func:`shard_samples` - what a split's shards hold, read with the standard library's tarfile.
* Images whose pixels say what an augmentation did, for the data tests, which write them with
  :func:`fastforec.data.shard_writer.write_dataset` (not dataprep's conversion, so that the data
  side is judged independently of the converter):

  * :func:`class_colour_sample` - flat regions whose colour encodes the class of the label;
  * :func:`coordinate_image` - red/green encode the source x/y, plus an achromatic checker
    texture (survives grayscale, killed by blur);
  * :func:`identity_image` - one flat colour per sample id, to recover which sample a crop is.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

# Several shards per split even for tiny sets, so readers' multi-shard paths get exercised.
TEST_SHARD_SAMPLES = 8
CHECKER_CELL = 4  # pixels per checker cell of the coordinate image
CHECKER_AMPLITUDE = 40
COORD_BASE = 16  # keeps every channel > 0 so that padding (exact 0) is recognisable
COORD_RANGE = 120  # red/green span; blue sits above it so no pixel is ever gray
COORD_BLUE = 200


def make_shards(out_dir: Path, *, layout: str = "voc", num_train: int = 24, num_labeled: int = 8, num_val: int = 6,
                size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Synthesise a raw tree under ``out_dir/raw``, partition it (``num_labeled`` labeled, the
    rest of the ``num_train`` unlabeled) and convert it; returns the shard directory
    ``out_dir/shards`` (manifest.json inside). VOC labels come from SegmentationClassAug (the
    blender path) so any ``num_labeled <= num_train`` works."""
    # imported here: the data tests use the image helpers below and must not need dataprep
    from dataprep.cityscapes import cityscapes_plan
    from dataprep.convert import DEFAULT_SHARD_MB, RunOptions, make_caps, run_conversion
    from dataprep.splits import random_partition, write_partition
    from dataprep.synth import make_synthetic
    from dataprep.voc import voc_plan

    out_dir = Path(out_dir)
    raw = make_synthetic(layout, out_dir / "raw", num_train=num_train, num_val=num_val, size=size, seed=seed)
    blender = layout == "voc"
    partition = random_partition(root=raw, layout=layout, labeled=num_labeled, seed=seed, blender=blender)
    split_dir = write_partition(partition, out_dir / "splits")
    if layout == "voc":
        plan = voc_plan(root=raw, split_dir=split_dir, blender=True, skip_bad=False)
    else:
        plan = cityscapes_plan(root=raw, split_dir=split_dir, image_format="png", skip_bad=False)
    shards = out_dir / "shards"
    run_conversion(plan, RunOptions(out=shards, workers=1,
                                    caps=make_caps(shard_samples=TEST_SHARD_SAMPLES, shard_mb=DEFAULT_SHARD_MB),
                                    quiet=True))
    return shards


CLASS_PALETTE = [(0, 0, 0), (230, 30, 30), (30, 200, 40), (40, 60, 230), (230, 220, 40), (200, 40, 220),
                 (40, 210, 220)]


def class_colour_sample(rng: np.random.Generator, *, height: int, width: int,
                        palette: list[tuple[int, int, int]] = CLASS_PALETTE) -> tuple[np.ndarray, np.ndarray]:
    """Background class 0 with a few axis-aligned rectangles of other classes; returns
    (image uint8 HxWx3, label uint8 HxW)."""
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(4):
        cls = int(rng.integers(1, len(palette)))
        h, w = int(rng.integers(height // 6, height // 2)), int(rng.integers(width // 6, width // 2))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        label[y: y + h, x: x + w] = cls
    image = np.asarray(palette, dtype=np.uint8)[label]
    return image, label


def coordinate_image(*, height: int, width: int) -> np.ndarray:
    """Red = source column, green = source row (both linear ramps), blue constant, plus an
    achromatic checker. Every channel stays in [COORD_BASE, 255], blue - red >= 64 everywhere,
    and red - blue / green - blue are exact ramps (the checker cancels)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    checker = (((yy // CHECKER_CELL) + (xx // CHECKER_CELL)) % 2) * CHECKER_AMPLITUDE
    image = np.stack([COORD_BASE + COORD_RANGE * xx / max(1, width - 1),
                      COORD_BASE + COORD_RANGE * yy / max(1, height - 1),
                      np.full_like(xx, COORD_BLUE)], axis=-1) + checker[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def identity_colour(i: int) -> tuple[int, int, int]:
    """A distinct, non-gray colour per id < 216 (6 levels per channel, all > 0)."""
    levels = (40, 80, 120, 160, 200, 240)
    return levels[i % 6], levels[(i // 6) % 6], levels[(i // 36) % 6]


def identity_image(i: int, *, height: int, width: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(identity_colour(i), dtype=np.uint8), (height, width, 3)).copy()


def shard_samples(manifest, split: str) -> dict[str, dict[str, bytes]]:
    """key -> {ext: bytes} of a split (``manifest`` a fastforec Manifest), read with tarfile."""
    out: dict[str, dict[str, bytes]] = {}
    for path in manifest.shard_paths(split):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out
