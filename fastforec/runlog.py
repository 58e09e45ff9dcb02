"""Run-directory logging: metrics.jsonl, TensorBoard and DeepSpeed's monitor (the console is
fastforec/console.py).

Only rank 0 writes. Scalars are accumulated as device tensors and turned into Python numbers
only at log steps: every ``.item()`` is a host-device sync that would stall a GPU step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fastforec.atomic import atomic_write_bytes


class ScalarMeter:
    """Running sums of named scalar tensors since the last ``pop()``."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._count += 1

    def pop(self) -> dict[str, float]:
        if not self._count:
            return {}
        keys = list(self._sums)
        # one sync for all of them
        means = (torch.stack([self._sums[k] for k in keys]) / self._count).tolist()
        self._sums, self._count = {}, 0
        return dict(zip(keys, means))


TENSORBOARD_DIR = "tensorboard"  # event files: runs/<name>/tensorboard/


class RunLogger:
    """metrics.jsonl, and the same numbers as ``<kind>/<key>`` scalars to TensorBoard (on by
    default) and to DeepSpeed's monitor (W&B, CSV, ... when its blocks enable them); a per-class
    list (``iou``) becomes ``<kind>/<key>/<class name>``.

    The TensorBoard writer is opened at the first record, not before: a run that fails while
    starting (a corrupt checkpoint to resume, say) leaves no new file in the run directory."""

    def __init__(self, run_dir: Path, *, enabled: bool, monitor: Any = None, tensorboard: bool = False,
                 class_names: Sequence[str] = ()):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        self.tensorboard_dir = run_dir / TENSORBOARD_DIR if tensorboard else None
        self._writer: Any = None
        self.class_names = list(class_names)

    def log(self, record: dict[str, Any], *, step: int, prefix: str) -> None:
        if not self.enabled:
            return
        record = {"kind": prefix, "time": time.time(), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        events = self._events(record, step=step, prefix=prefix)
        if self.monitor is not None:
            self.monitor.write_events(events)
        if self.tensorboard_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter  # slow to import: only when enabled

                self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
            for tag, value, at in events:
                self._writer.add_scalar(tag, value, at)
            self._writer.flush()  # a log step is seconds apart: readers see every record at once

    def _events(self, record: dict[str, Any], *, step: int, prefix: str) -> list[tuple[str, float, int]]:
        events = []
        for k, v in record.items():
            if k in ("kind", "time", "step"):
                continue
            if isinstance(v, (int, float)):
                events.append((f"{prefix}/{k}", float(v), step))
            elif isinstance(v, list) and len(v) == len(self.class_names):
                # None is a class absent from ground truth and prediction: no point to draw
                events += [(f"{prefix}/{k}/{name}", float(x), step) for name, x in zip(self.class_names, v)
                           if isinstance(x, (int, float))]
        return events

    def drop_after(self, step: int) -> int:
        """Remove the records of steps after ``step``: a run resumed from the checkpoint at
        ``step`` writes them again, and each step must appear once. A line torn by a kill goes
        too. Returns the number of lines removed."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                keep = json.loads(line).get("step", 0) <= step
            except (json.JSONDecodeError, AttributeError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += line.strip() != ""
        if dropped:
            atomic_write_bytes(self.path, "".join(f"{line}\n" for line in kept).encode())
        return dropped
