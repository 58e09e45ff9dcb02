"""The trainer a step or e2e benchmark drives, and the batches it is fed.

Both benchmarks drive the real :class:`fastforec.trainer.Trainer` (DeepSpeed engine, EMA teacher,
losses, optimizer) built from a run config. A *sample* is one labeled image together with its
unlabeled partner: the unit of ``data.batch_size`` and of the paper's "batch 16".
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from fastforec.config import Config

MEMORY_BATCHES = 2  # distinct in-memory batches the step benchmark cycles through

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]


@contextlib.contextmanager
def bench_trainer(cfg: Config, dist: Any) -> Iterator[Any]:
    """A Trainer whose run directory is a throw-away temporary directory (nothing is logged or
    checkpointed: only ``train_step`` is called)."""
    # lazy: DeepSpeed; `bench --what step --batches 0` counts FLOPs without a trainer
    from fastforec.trainer import Trainer

    # A DeepSpeed TensorBoard monitor block in the run config would make the engine write and
    # flush an event at every optimizer step; a benchmark of the step must not time that.
    cfg = dataclasses.replace(cfg, deepspeed={**cfg.deepspeed, "tensorboard": {"enabled": False}})
    with tempfile.TemporaryDirectory(prefix="fastforec-bench-") as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp), dist=dist)
        try:
            yield trainer
        finally:
            trainer.train_data.close()


def _own(batch: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    # DALI's tensors are zero-copy views of its buffers: clone so the batch outlives them.
    return None if batch is None else {k: v.to(device).clone() for k, v in batch.items()}


def memory_batches(train_data: Any, device: torch.device, count: int = MEMORY_BATCHES) -> list[Batch]:
    """``count`` real batches from the pipeline, copied to the device once."""
    batches = []
    for _ in range(count):
        labeled, unlabeled = train_data.next_batch()
        batches.append((_own(labeled, device), _own(unlabeled, device)))  # type: ignore[arg-type]
    return batches


def cycle(batches: list[Batch]) -> Callable[[], Batch]:
    position = {"i": 0}

    def next_batch() -> Batch:
        batch = batches[position["i"] % len(batches)]
        position["i"] += 1
        return batch
    return next_batch
