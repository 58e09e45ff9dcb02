"""Ready-made shard directories for the other components' tests and the demo."""

from __future__ import annotations

from pathlib import Path

from .cityscapes import cityscapes_plan
from .convert import DEFAULT_SHARD_MB, RunOptions, make_caps, run_conversion
from .splits import random_partition, write_partition
from .synth import make_synthetic
from .voc import voc_plan

# Several shards per split even for tiny sets, so readers' multi-shard paths get exercised.
TEST_SHARD_SAMPLES = 8


def make_shards(out_dir: Path, *, layout: str = "voc", num_train: int = 24, num_labeled: int = 8, num_val: int = 6,
                size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Synthesise a raw tree under ``out_dir/raw``, partition it (``num_labeled`` labeled, the
    rest of the ``num_train`` unlabeled) and convert it; returns the shard directory
    ``out_dir/shards`` (manifest.json inside). VOC labels come from SegmentationClassAug (the
    blender path) so any ``num_labeled <= num_train`` works."""
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
