"""The torch-facing data API: :class:`TrainData`, :class:`ValData`, :func:`resolve_device`.

Training batches (``B`` = ``cfg.batch_size`` per rank, ``H = W = cfg.crop_size``)::

    labeled   = {"image": float32 (B,3,H,W) RGB in [0,1] (strong photometric if aug.labeled_strong),
                 "label": int64 (B,H,W), 255 on padding/ignore}
    unlabeled = {"weak": float32 (B,3,H,W) [0,1], "strong": float32 (B,3,H,W) [0,1],
                 "valid": bool (B,H,W) False on padding,
                 "box": bool (B,H,W) CutMix box, all False when CutMix was not drawn,
                 with strong_views=2 also "strong2", "box2": the second strong view, same
                 geometry, its own photometric and CutMix draws (batch_draws.STREAM_AUG_UNLABELED_2)}

Validation batches: ``{"image": float32 (N,3,H,W), "label": int64 (N,H,W)}``, whole images,
padded bottom/right with image 0 / label 255 to the largest image of the batch.

Tensors live on the CPU for ``device="cpu"`` and on the current CUDA device for ``"gpu"``.

Position and determinism: batch (epoch, step) is a pure function of (seed, rank, world_size,
epoch, step) (:mod:`fastforec.data.batch_draws`). The trainer owns the position (micro-batches
consumed, in its checkpointed train state); :meth:`TrainData.seek` tells the loader where the next
batch comes from, and :meth:`TrainData.next_batch` goes on from there in order. DALI prefetches
ahead of the consumer; the inputs of every batch in flight are remembered in a FIFO, and a seek
drops them with the pipeline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from fastforec.config import ConfigError, DataConfig
from fastforec.data import batch_draws
from fastforec.data.manifest import Manifest
from fastforec.data.pipelines import (IGNORE_FILL, TrainGraph, build_train_pipeline, build_val_pipeline)
from fastforec.data.shard_reader import ShardError, SplitReader

DEVICES = ("auto", "cpu", "gpu")
PREFETCH_DEPTH = 2  # batches DALI prepares ahead of the consumer
IDENTITY_TAPS = np.ones((1, 1), dtype=np.float32)  # fed where no blur is drawn (branch not run)


def resolve_device(requested: str) -> str:
    """``auto`` -> ``gpu`` when CUDA is available, else ``cpu``; ``gpu`` without CUDA is an error."""
    if requested not in DEVICES:
        raise ConfigError(f"data.device: must be one of {', '.join(DEVICES)}, got {requested!r}")
    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "gpu" if cuda else "cpu"
    if requested == "gpu" and not cuda:
        raise ConfigError("data.device: 'gpu' requested but CUDA is not available; use 'auto' or 'cpu'")
    return requested


def _check_device(device: str) -> None:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu' (call resolve_device first), got {device!r}")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")


def _to_torch(tensor_list: Any) -> torch.Tensor:
    """Zero-copy view of a dense DALI batch. Safe because the pipelines run DALI's dynamic
    executor, whose outputs are reference-counted: the DLPack capsule keeps the buffer alive
    for as long as the torch tensor lives, and DALI allocates fresh buffers for later batches.
    (A copy here cost ~0.4 ms per sample at crop 321 on the CPU, ~15 % of the whole pipeline.)"""
    return torch.from_dlpack(tensor_list.as_tensor())


def _consumer_stream(device: str) -> Any:
    """The stream GPU outputs are handed over on: torch's current one, so that DALI makes that
    stream wait for the batch instead of making the host wait (``pipe.run(stream)``). None (host
    synchronous, nothing to wait for) for the CPU backend."""
    return torch.cuda.current_stream() if device == "gpu" else None


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _scalar_list(values: np.ndarray, dtype: type) -> list[np.ndarray]:
    return [np.array(v, dtype=dtype) for v in values]


@dataclass(frozen=True)
class _Branch:
    """Inputs of one branch (labeled or unlabeled) of one batch, kept until it is consumed."""

    indices: np.ndarray
    geometry: batch_draws.Geometry
    cutmix: batch_draws.CutMixBoxes | None
    cutmix2: batch_draws.CutMixBoxes | None = None  # the second strong view's boxes


def _photometric_feeds(p: batch_draws.Photometric) -> list[list[np.ndarray]]:
    taps = [batch_draws.gaussian_taps(float(s)) if b else IDENTITY_TAPS[0] for s, b in zip(p.sigma, p.blur)]
    # One (3, 1) column per output channel: the correlation taps of _mix_channels.
    mix_rows = [[np.ascontiguousarray(m[c].reshape(-1, 1)) for m in p.mix] for c in range(3)]
    return [_scalar_list(p.colour, np.bool_), _scalar_list(p.brightness, np.float32),
            _scalar_list(p.contrast, np.float32), *mix_rows, _scalar_list(p.blur, np.bool_),
            [t.reshape(1, -1) for t in taps], [t.reshape(-1, 1) for t in taps]]


def _geometry_feeds(g: batch_draws.Geometry) -> list[list[np.ndarray]]:
    return [list(g.decode_start), list(g.decode_shape), list(g.roi_start), list(g.roi_end),
            list(g.valid.astype(np.float32)), _scalar_list(g.flip, np.int32)]


class TrainData:
    """Labeled (and unlabeled) training batches for one rank. See the module docstring."""

    def __init__(self, manifest: Manifest, cfg: DataConfig, *, rank: int, world_size: int, seed: int,
                 with_unlabeled: bool, device: str, labeled: bool = True, strong_views: int = 1) -> None:
        """``labeled=False`` (benchmarks only) drops the labeled branch: next_batch then returns
        ``(None, unlabeled)``. ``strong_views=2`` adds the second strong view (UniMatch)."""
        _check_device(device)
        _check_rank(rank, world_size)
        if not (labeled or with_unlabeled):
            raise ValueError("TrainData needs the labeled or the unlabeled branch")
        if manifest.ignore_index != IGNORE_FILL:
            raise ShardError(f"{manifest.root / 'manifest.json'}: ignore_index {manifest.ignore_index} is not "
                             f"supported, padding is labelled {int(IGNORE_FILL)}; re-run dataprep")
        self.cfg, self.rank, self.world_size, self.seed, self.device = cfg, rank, world_size, seed, device
        self._labeled = SplitReader(manifest, "labeled", with_labels=True)
        self._unlabeled = SplitReader(manifest, "unlabeled", with_labels=False) if with_unlabeled else None
        if strong_views not in (1, 2):
            raise ValueError(f"strong_views must be 1 or 2, got {strong_views}")
        self._graph = TrainGraph(labeled=labeled, labeled_strong=cfg.aug.labeled_strong, unlabeled=with_unlabeled,
                                 strong_views=strong_views)
        epoch_split = self._unlabeled or self._labeled
        self.steps_per_epoch = batch_draws.per_rank(len(epoch_split), world_size) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ShardError(f"split '{epoch_split.split}' of '{manifest.root}' has {len(epoch_split)} samples, "
                             f"fewer than one batch of {cfg.batch_size} on each of {world_size} ranks; lower "
                             f"data.batch_size or add data")
        if batch_draws.per_rank(len(self._labeled), world_size) < 1:
            raise ShardError(f"split 'labeled' of '{manifest.root}' has {len(self._labeled)} samples, fewer "
                             f"than the {world_size} ranks")
        # (epoch, step) of the next batch handed to DALI; the consumer's position is the trainer's
        # (TrainState.batches), and the batches in between are the in-flight FIFO.
        self._fed = (0, 0)
        self._inflight: deque[tuple[_Branch | None, _Branch | None]] = deque()
        self._pipe: Any = None

    # ---- position -------------------------------------------------------------------------

    def _advance(self, pos: tuple[int, int]) -> tuple[int, int]:
        epoch, step = pos
        return (epoch + 1, 0) if step + 1 == self.steps_per_epoch else (epoch, step + 1)

    def seek(self, batches: int) -> None:
        """Make the next batch the one ``batches`` micro-batches into the run (a resume)."""
        if batches < 0:
            raise ValueError(f"seek: batches must be >= 0, got {batches}")
        self._reposition(divmod(batches, self.steps_per_epoch))

    def _reposition(self, pos: tuple[int, int]) -> None:
        # Batches already prefetched belong to the old position: drop the pipeline with them.
        self._pipe = None
        self._inflight.clear()
        self._fed = pos

    # ---- what goes into a batch ---------------------------------------------------------------

    def _rng(self, stream: int, epoch: int, step: int) -> np.random.Generator:
        return batch_draws._rng(self.seed, stream, self.rank, epoch, step)

    def _labeled_indices(self, epoch: int, step: int) -> np.ndarray:
        common = dict(num_samples=len(self._labeled), seed=self.seed, stream=batch_draws.STREAM_ORDER_LABELED,
                      batch_size=self.cfg.batch_size, rank=self.rank, world_size=self.world_size)
        if self._unlabeled is None:
            return batch_draws.epoch_batch(epoch=epoch, step=step, **common)
        position = (epoch * self.steps_per_epoch + step) * self.cfg.batch_size
        return batch_draws.stream_batch(position=position, **common)

    def _sizes(self, reader: SplitReader, indices: np.ndarray, encoded: list[np.ndarray]) -> np.ndarray:
        return np.array([reader.image_size(int(i), e) for i, e in zip(indices, encoded)], dtype=np.int64)

    def _labeled_feeds(self, epoch: int, step: int) -> tuple[_Branch, list[list[np.ndarray]]]:
        aug, crop = self.cfg.aug, self.cfg.crop_size
        idx = self._labeled_indices(epoch, step)
        images = [self._labeled.image_bytes(int(i)) for i in idx]
        labels = [self._labeled.label_bytes(int(i)) for i in idx]
        rng = self._rng(batch_draws.STREAM_AUG_LABELED, epoch, step)
        geo = batch_draws.draw_geometry(rng, sizes=self._sizes(self._labeled, idx, images), crop=crop, aug=aug)
        feeds = [images, labels] + _geometry_feeds(geo)
        if self._graph.labeled_strong:
            feeds += _photometric_feeds(batch_draws.draw_photometric(rng, n=len(idx), aug=aug))
        return _Branch(indices=idx, geometry=geo, cutmix=None), feeds

    def _unlabeled_feeds(self, epoch: int, step: int) -> tuple[_Branch, list[list[np.ndarray]]]:
        assert self._unlabeled is not None
        aug, crop = self.cfg.aug, self.cfg.crop_size
        idx = batch_draws.epoch_batch(num_samples=len(self._unlabeled), seed=self.seed,
                                      stream=batch_draws.STREAM_ORDER_UNLABELED, epoch=epoch, step=step,
                                      batch_size=self.cfg.batch_size, rank=self.rank, world_size=self.world_size)
        images = [self._unlabeled.image_bytes(int(i)) for i in idx]
        rng = self._rng(batch_draws.STREAM_AUG_UNLABELED, epoch, step)
        geo = batch_draws.draw_geometry(rng, sizes=self._sizes(self._unlabeled, idx, images), crop=crop, aug=aug)
        photo = batch_draws.draw_photometric(rng, n=len(idx), aug=aug)
        boxes = batch_draws.draw_cutmix(rng, n=len(idx), crop=crop, aug=aug)
        feeds = [images] + _geometry_feeds(geo) + _photometric_feeds(photo)
        boxes2 = None
        if self._graph.strong_views == 2:
            # its own stream: the first view's draws (and so mean teacher's batches) stay as they are
            rng2 = self._rng(batch_draws.STREAM_AUG_UNLABELED_2, epoch, step)
            feeds += _photometric_feeds(batch_draws.draw_photometric(rng2, n=len(idx), aug=aug))
            boxes2 = batch_draws.draw_cutmix(rng2, n=len(idx), crop=crop, aug=aug)
        return _Branch(indices=idx, geometry=geo, cutmix=boxes, cutmix2=boxes2), feeds

    def _source(self) -> list[list[np.ndarray]]:
        """Called by DALI (in this thread, during run()) once per batch it prefetches."""
        epoch, step = self._fed
        labeled, feeds = self._labeled_feeds(epoch, step) if self._graph.labeled else (None, [])
        unlabeled = None
        if self._unlabeled is not None:
            unlabeled, more = self._unlabeled_feeds(epoch, step)
            feeds += more
        self._inflight.append((labeled, unlabeled))
        self._fed = self._advance(self._fed)
        return feeds

    # ---- batches ------------------------------------------------------------------------------

    def _build(self) -> None:
        self._pipe = build_train_pipeline(graph=self._graph, source=self._source, device=self.device,
                                          crop=self.cfg.crop_size, batch_size=self.cfg.batch_size,
                                          num_threads=self.cfg.num_threads, prefetch=PREFETCH_DEPTH)

    def _explain_failure(self, error: RuntimeError) -> ShardError:
        """Name the shard behind a failed DALI batch: the failing batch is one of those in flight
        (prefetching), so re-check their samples one by one."""
        groups: list[tuple[SplitReader, list[int]]] = []
        for labeled, unlabeled in self._inflight:
            if labeled is not None:
                groups.append((self._labeled, [int(i) for i in labeled.indices]))
            if unlabeled is not None and self._unlabeled is not None:
                groups.append((self._unlabeled, [int(i) for i in unlabeled.indices]))
        for reader, indices in groups:
            culprit = reader.first_undecodable(indices)
            if culprit is not None:
                return ShardError(culprit)
        where = "; ".join(reader.describe(indices) for reader, indices in groups)
        return ShardError(f"reading a training batch failed ({_last_line(error)}); it came from one of {where}")

    def next_batch(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor] | None]:
        """The batch at the position, and the position moves on (into the next epoch after the
        epoch's last batch)."""
        if self._pipe is None:
            self._build()
        try:
            outputs = self._pipe.run(_consumer_stream(self.device))
        except ShardError:
            raise
        except RuntimeError as e:
            self._pipe = None  # a DALI pipeline is unusable after an error
            raise self._explain_failure(e) from e
        labeled, unlabeled = self._inflight.popleft()
        named = dict(zip(self._graph.outputs, outputs))
        return (None if labeled is None else self._labeled_batch(named),
                None if unlabeled is None else self._unlabeled_batch(named, unlabeled))

    def _labeled_batch(self, named: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = _to_torch(named["l_image"])
        label = _to_torch(named["l_label"])
        return {"image": image, "label": label.squeeze(-1).long()}

    def _unlabeled_batch(self, named: dict[str, Any], branch: _Branch) -> dict[str, torch.Tensor]:
        weak = _to_torch(named["u_weak"])
        strong = _to_torch(named["u_strong"])
        assert branch.cutmix is not None
        crop = self.cfg.crop_size
        if weak.device.type == "cpu":  # two memsets per sample: cheaper than full-size comparisons here
            valid, box = _masks(branch.geometry, branch.cutmix, crop=crop)
        else:
            valid, box = _masks_on_device(_mask_rectangles(branch.geometry, branch.cutmix, crop=crop), crop=crop,
                                          device=weak.device)
        batch = {"weak": weak, "strong": strong, "valid": valid, "box": box}
        if branch.cutmix2 is not None:
            batch["strong2"] = _to_torch(named["u_strong2"])
            if weak.device.type == "cpu":
                batch["box2"] = _masks(branch.geometry, branch.cutmix2, crop=crop)[1]
            else:
                batch["box2"] = _masks_on_device(_mask_rectangles(branch.geometry, branch.cutmix2, crop=crop),
                                                 crop=crop, device=weak.device)[1]
        return batch

    def close(self) -> None:
        self._pipe = None
        self._inflight.clear()
        self._labeled.close()
        if self._unlabeled is not None:
            self._unlabeled.close()


def _masks(geo: batch_draws.Geometry, boxes: batch_draws.CutMixBoxes, *,
           crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid and CutMix masks from the drawn parameters: both are rectangles, so they are two
    slice assignments per sample (a memset each) instead of full-size comparisons or extra
    planes pushed through DALI. Padding is bottom/right before the flip, so a flipped crop has
    its padding on the left."""
    n = len(geo.flip)
    valid = np.zeros((n, crop, crop), dtype=np.bool_)
    box = np.zeros((n, crop, crop), dtype=np.bool_)
    for b in range(n):
        rows, cols = (int(v) for v in geo.valid[b])
        first = crop - cols if geo.flip[b] else 0
        valid[b, :rows, first: first + cols] = True
        if boxes.apply[b]:
            (y, x), (h, w) = boxes.top_left[b], boxes.extent[b]
            box[b, y: y + h, x: x + w] = True
    return torch.from_numpy(valid), torch.from_numpy(box)


def _mask_rectangles(geo: batch_draws.Geometry, boxes: batch_draws.CutMixBoxes, *, crop: int) -> np.ndarray:
    """Per sample (valid top, left, bottom, right, box top, left, bottom, right) as int32; an
    empty box when CutMix was not drawn. The same rectangles as :func:`_masks` fills."""
    n = len(geo.flip)
    rect = np.zeros((n, 8), dtype=np.int32)
    for b in range(n):
        rows, cols = (int(v) for v in geo.valid[b])
        first = crop - cols if geo.flip[b] else 0
        rect[b, :4] = (0, first, rows, first + cols)
        if boxes.apply[b]:
            (y, x), (h, w) = boxes.top_left[b], boxes.extent[b]
            rect[b, 4:] = (y, x, y + h, x + w)
    return rect


def _masks_on_device(rect: np.ndarray, *, crop: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks made where they are used (CUDA): only the (n, 8) rectangles cross the bus, from
    pinned memory so the copy does not synchronise the stream, instead of 2 x n x crop^2 bytes
    from pageable memory."""
    r = torch.from_numpy(rect)
    if device.type == "cuda":
        r = r.pin_memory()
    r = r.to(device, non_blocking=True)
    ys = torch.arange(crop, device=device).view(1, crop, 1)
    xs = torch.arange(crop, device=device).view(1, 1, crop)

    def inside(c: torch.Tensor) -> torch.Tensor:
        top, left, bottom, right = (c[:, i].view(-1, 1, 1) for i in range(4))
        return (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
    return inside(r[:, :4]), inside(r[:, 4:])


class ValData:
    """Validation batches for one rank: sample i goes to rank i % world_size, in manifest order,
    so ranks are disjoint and together see every sample exactly once."""

    def __init__(self, manifest: Manifest, cfg: DataConfig, *, batch_size: int, rank: int, world_size: int,
                 device: str, split: str = "val") -> None:
        _check_device(device)
        _check_rank(rank, world_size)
        self.cfg, self.device = cfg, device
        self._reader = SplitReader(manifest, split, with_labels=True)
        self._indices = np.arange(rank, len(self._reader), world_size)
        self.batch_size = batch_size
        self._pending: deque[np.ndarray] = deque()
        self._pipe: Any = None  # built at the first evaluation, reused by the next ones

    def __len__(self) -> int:
        return -(-len(self._indices) // self.batch_size)

    def _source(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if not self._pending:
            raise StopIteration  # DALI's end-of-data signal for a callback source
        idx = self._pending.popleft()
        return ([self._reader.image_bytes(int(i)) for i in idx], [self._reader.label_bytes(int(i)) for i in idx])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if len(self._indices) == 0:
            return
        batches = [self._indices[i: i + self.batch_size] for i in range(0, len(self._indices), self.batch_size)]
        self._pending = deque(batches)
        if self._pipe is None:
            # One pipeline for every evaluation: with a prefetch depth of 1 it asks the source for
            # exactly one batch per run(), so refilling the queue is all a new evaluation needs.
            self._pipe = build_val_pipeline(source=self._source, device=self.device, batch_size=self.batch_size,
                                            num_threads=self.cfg.num_threads)
        for idx in batches:
            try:
                image_tl, label_tl = self._pipe.run(_consumer_stream(self.device))
            except RuntimeError as e:
                self._pipe = None  # a DALI pipeline is unusable after an error
                indices = [int(i) for i in idx]
                culprit = self._reader.first_undecodable(indices)
                raise ShardError(culprit or f"reading a validation batch failed ({_last_line(e)}); it came from "
                                            f"{self._reader.describe(indices)}") from e
            image = _to_torch(image_tl)
            label = _to_torch(label_tl)
            yield {"image": image, "label": label.squeeze(-1).long()}
