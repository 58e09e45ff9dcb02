"""Batches that already live on the device: a data source for the trainer without DALI or shards.

``fastforec bench --what gpu-check`` times the training step on an offline GPU node where DALI
is not installed; it hands the :class:`fastforec.trainer.Trainer` an :class:`InMemoryData`
instead of letting it open the shards. Nothing here imports DALI or webdataset.

The batches follow the format of :mod:`fastforec.data.loader` (labeled image/label, unlabeled
weak/strong/valid/box) and the source answers the calls the trainer makes of ``TrainData``
(``steps_per_epoch``, ``next_batch``, ``seek``, ``close``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastforec.data.manifest import Manifest

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]
IGNORE_INDEX = 255
# Synthetic batches: a border of ignore/padding pixels and a CutMix box, as real crops have.
BORDER_FRACTION = 1 / 16
BOX_FRACTION = 1 / 3


def memory_manifest(num_classes: int, *, dataset: str = "memory") -> Manifest:
    """A manifest for data that has no shards: class names, palette and foreground classes only
    (class 0 is background, the others foreground, as in VOC)."""
    palette = tuple(((37 * c) % 256, (91 * c) % 256, (173 * c) % 256) for c in range(num_classes))
    return Manifest(root=Path("."), dataset=dataset, num_classes=num_classes,
                    class_names=tuple(f"class_{c}" for c in range(num_classes)), palette=palette,
                    ignore_index=IGNORE_INDEX, foreground_classes=tuple(range(1, num_classes)), splits={})


def synthetic_batch(batch: int, crop: int, num_classes: int, *, device: torch.device, seed: int,
                    strong_views: int = 1) -> Batch:
    """Random images and labels in the trainer's batch format (for timing, not learning);
    ``strong_views=2`` adds the second strong view and its box (UniMatch, UniMatch V2)."""
    gen = torch.Generator().manual_seed(seed)
    border = max(1, int(crop * BORDER_FRACTION))
    label = torch.randint(0, num_classes, (batch, crop, crop), generator=gen)
    label[:, :border] = IGNORE_INDEX
    weak = torch.rand(batch, 3, crop, crop, generator=gen)
    valid = torch.ones(batch, crop, crop, dtype=torch.bool)
    valid[:, -border:] = False
    box = torch.zeros(batch, crop, crop, dtype=torch.bool)
    side = max(1, int(crop * BOX_FRACTION))
    box[::2, :side, :side] = True
    labeled = {"image": torch.rand(batch, 3, crop, crop, generator=gen), "label": label}
    unlabeled = {"weak": weak, "strong": (weak * 0.8 + 0.1), "valid": valid, "box": box}
    if strong_views == 2:
        unlabeled.update(strong2=weak * 0.6 + 0.2, box2=box.flip(0))
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return move(labeled), move(unlabeled)


class MemoryTrainData:
    """Cycles through a fixed list of batches; an epoch is ``len(batches)`` steps."""

    def __init__(self, batches: list[Batch]):
        if not batches:
            raise ValueError("MemoryTrainData needs at least one batch")
        self.batches = batches
        self.steps_per_epoch = len(batches)
        self.position = 0

    def next_batch(self) -> Batch:
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def seek(self, batches: int) -> None:
        self.position = batches

    def close(self) -> None:
        pass


@dataclass
class InMemoryData:
    """What the trainer needs from a dataset: its manifest, training batches, validation batches."""

    manifest: Manifest
    train: MemoryTrainData
    val: list[dict[str, torch.Tensor]] = field(default_factory=list)
