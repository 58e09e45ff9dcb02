"""Write a synthetic dataset in the official VOC2012 directory layout."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastforec.atomic import atomic_write_json
from fastforec.labels import bit_palette

from ..errors import DataprepError
from ..splitfiles import write_split_list
from . import pretrain, sslbench
from .common import encode_jpeg, encode_png, sample_rng, write_file
from .tree import run_tasks
from .voc import render_voc_scene

IMAGE_DIR = "JPEGImages"
CLASSIC_DIR = "SegmentationClass"
AUG_DIR = "SegmentationClassAug"
SETS_DIR = "ImageSets/Segmentation"
# Real VOC has SegmentationClass masks for 1464 of the 10582 trainaug ids; here every second
# (sorted) training id is in train.txt, so both the classic and blender paths have data.
CLASSIC_EVERY = 2
# What the images show: "scenes" (5 classes in street/nature/indoor context; the demo's and the
# tests' data), "sslbench" (10 classes with shared textures, made to need unlabeled data) or
# "pretrain" (the other 10 VOC classes in other textures, fully labeled: a source to pretrain on).
VOC_PRESETS = ("scenes", sslbench.PRESET, pretrain.PRESET)


@dataclass(frozen=True)
class VocTask:
    image_id: str
    classic: bool  # also write SegmentationClass/<id>.png (train.txt and val ids)


def _write_sample(task: VocTask, *, out: Path, size: tuple[int, int], seed: int, jpeg_quality: int,
                  table: sslbench.StyleTable | None,
                  pretrain_styles: tuple[pretrain.Style, ...] | None = None) -> list[sslbench.SceneObject]:
    """Write one sample; returns what it shows (sslbench only, else an empty list)."""
    rng = sample_rng(seed, task.image_id)
    if table is not None:
        image, label, objects = sslbench.render_sslbench_scene(rng, size, table)
    elif pretrain_styles is not None:
        (image, label), objects = pretrain.render_pretrain_scene(rng, size, pretrain_styles), []
    else:
        (image, label), objects = render_voc_scene(rng, size), []
    palette = bit_palette()
    write_file(out / IMAGE_DIR / f"{task.image_id}.jpg", encode_jpeg(image, quality=jpeg_quality))
    png = encode_png(label, palette=palette)
    write_file(out / AUG_DIR / f"{task.image_id}.png", png)
    if task.classic:
        write_file(out / CLASSIC_DIR / f"{task.image_id}.png", png)
    return objects


def write_voc_tree(out: Path, *, train_ids: list[str], val_ids: list[str], size: tuple[int, int], seed: int,
                   jpeg_quality: int, workers: int, quiet: bool, classic_ids: list[str] | None = None,
                   preset: str = "scenes") -> Path:
    """JPEGImages/*.jpg, SegmentationClass/*.png (train.txt + val), SegmentationClassAug/*.png
    (all), ImageSets/Segmentation/{train,val,trainaug}.txt. The sslbench and pretrain presets label
    every training image (train.txt = trainaug); sslbench adds sslbench.json (what each image shows,
    and the class-balanced order that `dataprep splits --balanced` takes its labeled budgets from)."""
    if preset not in VOC_PRESETS:
        raise DataprepError(f"--preset must be one of {', '.join(VOC_PRESETS)}, got '{preset}'")
    for d in (IMAGE_DIR, CLASSIC_DIR, AUG_DIR, SETS_DIR):
        (out / d).mkdir(parents=True, exist_ok=True)
    trainaug = sorted(train_ids)
    table = sslbench.style_table(seed) if preset == sslbench.PRESET else None
    pretrain_styles = pretrain.style_table(seed) if preset == pretrain.PRESET else None
    if classic_ids is None:
        classic_ids = trainaug if preset != "scenes" else trainaug[::CLASSIC_EVERY]
    classic = sorted(classic_ids)
    if not set(classic) <= set(trainaug):
        raise DataprepError(f"classic ids must be training ids: {sorted(set(classic) - set(trainaug))[:5]}")
    classic_set = set(classic) | set(val_ids)
    tasks = [VocTask(i, i in classic_set) for i in trainaug + sorted(val_ids)]
    shown = run_tasks(partial(_write_sample, out=out, size=size, seed=seed, jpeg_quality=jpeg_quality, table=table,
                              pretrain_styles=pretrain_styles),
                      tasks, workers=workers, description="synthesising voc", quiet=quiet)
    write_split_list(out / SETS_DIR / "trainaug.txt", trainaug)
    write_split_list(out / SETS_DIR / "train.txt", classic)
    write_split_list(out / SETS_DIR / "val.txt", sorted(val_ids))
    if table is not None:
        objects = {t.image_id: o for t, o in zip(tasks, shown)}
        train_classes = {i: sorted({o.class_id for o in objects[i]}) for i in trainaug}
        order = sslbench.balanced_order(train_classes, seed=seed)
        # Written last: its presence says the tree is complete.
        atomic_write_json(out / sslbench.METADATA_FILE, sslbench.metadata(table, objects, order))
    return out
