"""The data sets the benchmarks generate when pointed at an empty directory.

* :func:`synthetic_voc_shards` - dataprep's synthetic VOC scenes, made by running the dataprep
  command line (``synth``, ``splits``, ``voc``): what ``fastforec bench --what data`` reads by
  default, and what the gpu-check's DALI section reads;
* :func:`make_bench_dataset` - VOC-sized JPEGs with photo-like entropy (:func:`textured_jpeg`),
  written straight into the manifest contract format (``--synthetic textured``; also the data
  set of the shard-verification benchmark in docs/benchmarks.md).

:func:`write_dataset` writes what dataprep would write (tar shards via webdataset's TarWriter,
DALI ``wds2idx`` indexes, ``manifest.json``) from samples made in memory, for images that no
raw dataset layout describes; the test suite builds its pixel-coded shard sets with it too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from wds2idx import IndexCreator

from fastforec.atomic import atomic_path, atomic_write_json
from fastforec.data.manifest import Manifest, ShardInfo, SplitInfo
from fastforec.data.shard_reader import file_sha256
from fastforec.dataprep_cli import run_dataprep

JPEG_QUALITY = 90
SHARDS_SUBDIR = "shards"  # where synthetic_voc_shards puts the shards (raw/ and splits/ beside it)


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    image_ext: str  # "jpg" or "png"
    label: bytes | None = None


def encode(array: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_shard(path: Path, samples: list[Sample]) -> ShardInfo:
    """One tar shard + its DALI index, each written under a temporary name and renamed."""
    with atomic_path(path) as tmp:
        with wds.TarWriter(str(tmp)) as writer:
            for s in samples:
                record = {"__key__": s.key, s.image_ext: s.image}
                if s.label is not None:
                    record["label.png"] = s.label
                writer.write(record)
    index = path.with_suffix(".idx")
    with atomic_path(index) as tmp:
        creator = IndexCreator(str(path), str(tmp), verbose=False)
        creator.create_index()
        creator.close()
    return ShardInfo(file=path.name, index=index.name, num_samples=len(samples), sha256=file_sha256(path),
                     size=path.stat().st_size)


def write_dataset(out_dir: str | Path, *, splits: dict[str, list[Sample]], class_names: list[str],
                  palette: list[tuple[int, int, int]], foreground: list[int], dataset: str = "synth",
                  shard_size: int = 16) -> Manifest:
    """``splits`` as shards of ``shard_size`` samples under ``out_dir``, the manifest last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for split, samples in splits.items():
        shards = [write_shard(out / f"{split}-{i // shard_size:06d}.tar", samples[i: i + shard_size])
                  for i in range(0, len(samples), shard_size)]
        infos[split] = SplitInfo(tuple(shards))
    manifest = Manifest(root=out, dataset=dataset, num_classes=len(class_names), class_names=tuple(class_names),
                        palette=tuple(palette), ignore_index=255, foreground_classes=tuple(foreground),
                        splits=infos, source={"generator": "fastforec.bench.datasets"})
    atomic_write_json(out / "manifest.json", manifest.to_dict())
    return Manifest.load(out)


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
                         class_names=names, palette=palette, foreground=list(range(1, 21)), dataset="voc",
                         shard_size=256)


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
