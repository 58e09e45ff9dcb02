"""Write a synthetic dataset in the official Cityscapes directory layout."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .cityscapes import render_cityscapes_scene
from .common import encode_png, sample_rng, write_file
from .tree import run_tasks

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt")
VAL_CITIES = ("frankfurt", "lindau", "munster")
FRAME = 19  # Cityscapes' annotated frame is the 20th of each snippet: <city>_<seq>_000019


@dataclass(frozen=True)
class CityTask:
    subset: str  # "train" or "val"
    key: str  # <city>_<seq>_<frame>

    @property
    def city(self) -> str:
        return self.key.split("_", 1)[0]


def default_keys(cities: tuple[str, ...], count: int) -> list[str]:
    return [f"{cities[i % len(cities)]}_{i:06d}_{FRAME:06d}" for i in range(count)]


def _write_sample(task: CityTask, *, out: Path, size: tuple[int, int], seed: int) -> None:
    image, label = render_cityscapes_scene(sample_rng(seed, task.key), size)
    image_dir = out / "leftImg8bit" / task.subset / task.city
    label_dir = out / "gtFine" / task.subset / task.city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    write_file(image_dir / f"{task.key}_leftImg8bit.png", encode_png(image))
    write_file(label_dir / f"{task.key}_gtFine_labelIds.png", encode_png(label))


def write_cityscapes_tree(out: Path, *, train_keys: list[str], val_keys: list[str], size: tuple[int, int],
                          seed: int, workers: int, quiet: bool) -> Path:
    """leftImg8bit/{train,val}/<city>/<key>_leftImg8bit.png and
    gtFine/{train,val}/<city>/<key>_gtFine_labelIds.png."""
    tasks = [CityTask("train", k) for k in sorted(train_keys)] + [CityTask("val", k) for k in sorted(val_keys)]
    run_tasks(partial(_write_sample, out=out, size=size, seed=seed), tasks, workers=workers,
              description="synthesising cityscapes", quiet=quiet)
    return out
