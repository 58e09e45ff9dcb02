"""The data sets the benchmarks generate when pointed at an empty directory.

* :func:`synthetic_voc_shards` - dataprep's synthetic VOC scenes, made by running the dataprep
  command line (``synth``, ``splits``, ``voc``): what ``fastforec bench --what data`` reads by
  default, and what the gpu-check's DALI section reads;
* :func:`make_bench_dataset` - VOC-sized JPEGs with photo-like entropy (:func:`textured_jpeg`),
  written straight into the manifest contract format (``--synthetic textured``; also the data
  set of the shard-verification benchmark in docs/benchmarks.md).

The textured set is made in memory, for images that no raw dataset layout describes, and written
with :func:`fastforec.data.shard_writer.write_dataset`: the shard writer dataprep uses.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fastforec.data.manifest import Manifest
from fastforec.data.shard_writer import Sample, write_dataset
from fastforec.dataprep_cli import run_dataprep

JPEG_QUALITY = 90
SHARDS_SUBDIR = "shards"  # where synthetic_voc_shards puts the shards (raw/ and splits/ beside it)
SOURCE = {"generator": "fastforec.bench.datasets"}  # the manifest's "source" of the sets made here


def encode(array: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def textured_jpeg(rng: np.random.Generator, *, height: int, width: int) -> tuple[bytes, bytes]:
    """A JPEG with photo-like entropy (~95 kB at 500x375) and a matching label PNG: smooth
    waves, a few solid blobs (the 'objects', also in the label) and sensor-like noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):
        image[..., c] = 128 + 60 * np.sin(xx / rng.uniform(5, 40) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(5, 40))
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, 120)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[blob] = rng.uniform(0, 255, 3)
        label[blob] = int(rng.integers(1, 21))
    image += rng.normal(0, 18, image.shape)
    return encode(np.clip(image, 0, 255).astype(np.uint8), "jpg"), encode(label, "png")


def make_bench_dataset(out_dir: str | Path, *, num_samples: int, height: int = 375, width: int = 500,
                       seed: int = 0) -> Manifest:
    """VOC-sized JPEG shards for the data benchmark (the same samples in all three splits)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(num_samples):
        image, label = textured_jpeg(rng, height=height, width=width)
        samples.append(Sample(key=f"b{i:06d}", image=image, image_ext="jpg", label=label))
    unlabeled = [Sample(key=s.key, image=s.image, image_ext="jpg") for s in samples]
    names = ["background"] + [f"class{i}" for i in range(1, 21)]
    palette = [(i * 12 % 256, i * 37 % 256, i * 91 % 256) for i in range(21)]
    return write_dataset(out_dir, splits={"labeled": samples, "unlabeled": unlabeled, "val": samples},
                         class_names=names, palette=palette, foreground=list(range(1, 21)), source=SOURCE,
                         dataset="voc", shard_size=256)


def synthetic_voc_shards(out_dir: Path, *, num_train: int, num_labeled: int, num_val: int,
                         size: tuple[int, int], seed: int) -> Path:
    """dataprep's synthetic VOC tree (``out_dir/raw``), a random partition with ``num_labeled``
    labeled ids (``out_dir/splits``) and its shards, whose directory (``out_dir/shards``) is
    returned. Labels come from SegmentationClassAug (``--blender``), which the synthetic tree
    has for every training image, so any ``num_labeled <= num_train`` works."""
    raw, splits, shards = out_dir / "raw", out_dir / "splits", out_dir / SHARDS_SUBDIR
    height, width = size
    run_dataprep(["synth", "--layout", "voc", "--out", raw, "--num-train", num_train, "--num-val", num_val,
                  "--size", f"{height}x{width}", "--seed", seed, "--quiet"])
    run_dataprep(["splits", "--root", raw, "--layout", "voc", "--labeled", num_labeled, "--seed", seed, "--blender",
                  "--out", splits])
    run_dataprep(["voc", "--root", raw, "--split-dir", splits, "--blender", "--out", shards, "--quiet"])
    return shards
