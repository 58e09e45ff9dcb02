"""The augmentation recipe done the way the peer repositories do it: PIL + torchvision
transforms, one sample at a time, in a ``torch.utils.data.DataLoader`` with worker processes,
reading the same shards through the ``webdataset`` library.

It is the throughput baseline of ``fastforec bench --what data`` and the independent check of
the DALI pipelines' augmentation statistics. It shares the config (probabilities and ranges)
and nothing else with :mod:`fastforec.data.pipelines`: its own random draws (Python ``random``
and torch, seeded per worker by the DataLoader), its own geometry (resize the whole image,
pad, crop), its own photometric operators (torchvision ColorJitter, RandomGrayscale, PIL
GaussianBlur).

Output dicts have the same names, shapes and dtypes as :class:`fastforec.data.TrainData`.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision import transforms

from fastforec.config import AugConfig, DataConfig
from fastforec.data.manifest import IMAGE_EXTS, LABEL_EXT, Manifest

IGNORE = 255
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the peers' normalisation
STRONG_KEYS = (("strong", "box"), ("strong2", "box2"))  # the names TrainData gives the strong views
WORKER_START = "forkserver"  # how DataLoader workers start (see reference_loader)


def _decode(data: bytes, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert(mode)


class Recipe:
    """Weak geometric + strong photometric augmentation with PIL/torchvision.

    ``strong_views``: photometric views per unlabeled image, each with its own CutMix box (UniMatch
    makes two). ``normalize``: standardise the float32 images with the ImageNet statistics on the
    CPU, as the peers' loaders do (fastforec's model does it on the device); the equal-work baseline
    of ``bench --what data`` turns it on."""

    def __init__(self, aug: AugConfig, crop: int, *, strong_views: int = 1, normalize: bool = False) -> None:
        self.aug, self.crop, self.strong_views = aug, crop, strong_views
        self.jitter = transforms.RandomApply(
            [transforms.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)], p=aug.jitter_prob)
        self.gray = transforms.RandomGrayscale(p=aug.grayscale_prob)
        steps: list[Any] = [transforms.ToTensor()]
        if normalize:
            steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        self.to_tensor = transforms.Compose(steps)

    def geometric(self, rnd: random.Random, image: Image.Image,
                  label: Image.Image) -> tuple[Image.Image, Image.Image]:
        """``label`` is the class map (labeled) or an all-zero map whose padding becomes 255 (the
        peers' 'ignore mask' trick for unlabeled crops)."""
        w, h = image.size
        s = rnd.uniform(self.aug.scale_min, self.aug.scale_max)
        ow, oh = max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))
        image = image.resize((ow, oh), Image.BILINEAR)
        label = label.resize((ow, oh), Image.NEAREST)
        padw, padh = max(self.crop - ow, 0), max(self.crop - oh, 0)
        if padw or padh:
            image = ImageOps.expand(image, border=(0, 0, padw, padh), fill=0)
            label = ImageOps.expand(label, border=(0, 0, padw, padh), fill=IGNORE)
        x = rnd.randint(0, image.size[0] - self.crop)
        y = rnd.randint(0, image.size[1] - self.crop)
        box = (x, y, x + self.crop, y + self.crop)
        image, label = image.crop(box), label.crop(box)
        if rnd.random() < self.aug.flip_prob:
            image, label = image.transpose(Image.FLIP_LEFT_RIGHT), label.transpose(Image.FLIP_LEFT_RIGHT)
        return image, label

    def photometric(self, rnd: random.Random, image: Image.Image) -> Image.Image:
        image = self.gray(self.jitter(image))
        if rnd.random() < self.aug.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(radius=rnd.uniform(self.aug.blur_sigma_min,
                                                                                self.aug.blur_sigma_max)))
        return image

    def cutmix_box(self, rnd: random.Random) -> torch.Tensor:
        """UniMatch's draw: area once, then aspect and corner until the box fits."""
        box = torch.zeros(self.crop, self.crop, dtype=torch.bool)
        if rnd.random() >= self.aug.cutmix_prob:
            return box
        area = rnd.uniform(self.aug.cutmix_area_min, self.aug.cutmix_area_max) * self.crop ** 2
        while True:
            ratio = rnd.uniform(self.aug.cutmix_aspect_min, 1 / self.aug.cutmix_aspect_min)
            bh, bw = int(math.sqrt(area * ratio)), int(math.sqrt(area / ratio))
            y, x = rnd.randrange(self.crop), rnd.randrange(self.crop)
            if y + bh <= self.crop and x + bw <= self.crop:
                break
        box[y: y + max(bh, 1), x: x + max(bw, 1)] = True
        return box

    def labeled(self, rnd: random.Random, image: Image.Image, label: Image.Image,
                strong: bool) -> dict[str, torch.Tensor]:
        image, label = self.geometric(rnd, image, label)
        if strong:
            image = self.photometric(rnd, image)
        return {"image": self.to_tensor(image), "label": torch.from_numpy(np.array(label, dtype=np.int64))}

    def unlabeled(self, rnd: random.Random, image: Image.Image) -> dict[str, torch.Tensor]:
        weak, pad = self.geometric(rnd, image, Image.new("L", image.size, 0))
        out = {"weak": self.to_tensor(weak), "valid": torch.from_numpy(np.array(pad) != IGNORE)}
        for image_key, box_key in STRONG_KEYS[:self.strong_views]:
            out[image_key] = self.to_tensor(self.photometric(rnd, weak.copy()))
            out[box_key] = self.cutmix_box(rnd)
        return out


def _image_of(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise KeyError(f"sample '{sample.get('__key__')}' from '{sample.get('__url__')}' has no image "
                   f"({sorted(sample)})")


class ReferenceDataset(IterableDataset):
    """Endless (or ``passes``-long) stream of augmented samples of one split. Each DataLoader
    worker reads every shard and keeps every num_workers-th sample, so a single shard still
    feeds all workers (the peers' shard-per-worker split would idle all but one)."""

    def __init__(self, manifest: Manifest, cfg: DataConfig, *, split: str, seed: int,
                 passes: int | None = None, strong_views: int = 1, normalize: bool = False) -> None:
        super().__init__()
        manifest.check_files(split)
        self.urls = [str(p) for p in manifest.shard_paths(split)]
        self.cfg, self.split, self.seed, self.passes = cfg, split, seed, passes
        self.strong_views, self.normalize = strong_views, normalize

    def _samples(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        source = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples())
        for i, sample in enumerate(source):
            if i % workers == worker:
                yield sample

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # torchvision's transforms draw from torch's global generator, which the DataLoader
        # seeds per worker from its base seed; our own draws use a worker-seeded Random.
        base = torch.initial_seed() if info is not None else self.seed
        rnd = random.Random(base)
        if info is None:
            torch.manual_seed(self.seed)
        recipe = Recipe(self.cfg.aug, self.cfg.crop_size, strong_views=self.strong_views, normalize=self.normalize)
        done = 0
        while self.passes is None or done < self.passes:
            for sample in self._samples(worker, workers):
                image = _decode(_image_of(sample), "RGB")
                if self.split == "unlabeled":
                    yield recipe.unlabeled(rnd, image)
                else:
                    label = _decode(sample[LABEL_EXT], "L")
                    yield recipe.labeled(rnd, image, label, strong=self.cfg.aug.labeled_strong)
            done += 1


def reference_loader(manifest: Manifest, cfg: DataConfig, *, split: str = "unlabeled", num_workers: int = 2,
                     seed: int = 0, passes: int | None = None, strong_views: int = 1,
                     normalize: bool = False) -> DataLoader:
    """Batches of ``cfg.batch_size`` as the peers build them: default collate, worker processes,
    pinned memory off (CPU).

    The workers start from a fork server, not by forking this process: the bench has DALI's
    thread pools running here, and a fork of a process with running threads copies locks in
    whatever state they hold (a worker segfaulted that way, depending on the parent's memory
    layout). Start-up is outside the timed rounds."""
    generator = torch.Generator().manual_seed(seed)
    context = WORKER_START if num_workers > 0 else None
    return DataLoader(ReferenceDataset(manifest, cfg, split=split, seed=seed, passes=passes,
                                       strong_views=strong_views, normalize=normalize),
                      batch_size=cfg.batch_size, num_workers=num_workers, generator=generator,
                      persistent_workers=num_workers > 0, drop_last=True, multiprocessing_context=context)
