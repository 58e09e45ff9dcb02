"""Small shard sets in the manifest contract format, for the tests and the data benchmark.

``dataprep`` is the real converter; this module only writes what it would write (tar shards via
webdataset's TarWriter, DALI ``wds2idx`` indexes, ``manifest.json``) from images generated in
memory, with contents designed so that augmentation results can be checked from pixels alone:

* :func:`class_colour_sample` - flat regions whose colour encodes the class of the label;
* :func:`coordinate_image` - red/green encode the source x/y, plus an achromatic checker
  texture (survives grayscale, killed by blur);
* :func:`identity_image` - one flat colour per sample id, to recover which sample a crop is;
* :func:`textured_jpeg` - photo-like entropy for throughput measurements.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fastforec.atomic import atomic_path, atomic_write_json
from fastforec.data.manifest import Manifest, ShardInfo, SplitInfo

JPEG_QUALITY = 90
CHECKER_CELL = 4  # pixels per checker cell of the coordinate image
CHECKER_AMPLITUDE = 40
COORD_BASE = 16  # keeps every channel > 0 so that padding (exact 0) is recognisable
COORD_RANGE = 120  # red/green span; blue sits above it so no pixel is ever gray
COORD_BLUE = 200


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path: Path, samples: list[Sample]) -> ShardInfo:
    """One tar shard + its DALI index, each written under a temporary name and renamed."""
    import webdataset as wds
    from wds2idx import IndexCreator

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
    return ShardInfo(file=path.name, index=index.name, num_samples=len(samples), sha256=_sha256(path),
                     size=path.stat().st_size)


def write_dataset(out_dir: str | Path, *, splits: dict[str, list[Sample]], class_names: list[str],
                  palette: list[tuple[int, int, int]], foreground: list[int], dataset: str = "synth",
                  shard_size: int = 16) -> Manifest:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for split, samples in splits.items():
        shards = [write_shard(out / f"{split}-{i // shard_size:06d}.tar", samples[i: i + shard_size])
                  for i in range(0, len(samples), shard_size)]
        infos[split] = SplitInfo(tuple(shards))
    manifest = Manifest(root=out, dataset=dataset, num_classes=len(class_names), class_names=tuple(class_names),
                        palette=tuple(palette), ignore_index=255, foreground_classes=tuple(foreground),
                        splits=infos, source={"generator": "fastforec.data.testing"})
    atomic_write_json(out / "manifest.json", manifest.to_dict())
    return Manifest.load(out)


# ---------------------------------------------------------------------------------------------
# image contents

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
