"""Per-rank numbers of a step or e2e benchmark and the result they sum up to.

Multi-rank (``deepspeed`` / ``torchrun``): every rank times its own steps (the ranks run in
lockstep because the gradient all-reduce is a collective), the per-rank numbers are gathered,
and rank 0 prints and writes them with the total. ``run_identity`` records the settings that
make two result files comparable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist

from fastforec.bench.peak import compute_dtype
from fastforec.config import Config


def gather_metrics(metrics: dict[str, float], dist: Any) -> list[dict[str, float]]:
    """This rank's named numbers, gathered from every rank in rank order (every rank must call
    it with the same keys; a no-op in a world of one)."""
    if dist.world_size == 1 or not tdist.is_initialized():
        return [dict(metrics)]
    keys = list(metrics)
    local = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=dist.device)
    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    tdist.all_gather(parts, local)
    return [dict(zip(keys, p.tolist())) for p in parts]


@dataclass
class RankRow:
    rank: int
    samples_per_s: float
    flops_per_sample: float
    peak_flops_per_s: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def achieved_flops_per_s(self) -> float:
        return self.samples_per_s * self.flops_per_sample

    @property
    def mfu(self) -> float:
        return self.achieved_flops_per_s / self.peak_flops_per_s


ROW_KEYS = ("samples_per_s", "flops_per_sample", "peak_flops_per_s")


def per_rank_rows(gathered: list[dict[str, float]]) -> list[RankRow]:
    """Rows from gathered metrics: the ROW_KEYS, anything else goes into ``extra``."""
    return [RankRow(rank=r, samples_per_s=m["samples_per_s"], flops_per_sample=m["flops_per_sample"],
                    peak_flops_per_s=m["peak_flops_per_s"], extra={k: v for k, v in m.items() if k not in ROW_KEYS})
            for r, m in enumerate(gathered)]


def throughput_summary(rows: list[RankRow]) -> dict[str, Any]:
    """The JSON keys every step/e2e result has: per device (mean over ranks) and in total."""
    n = len(rows)
    return {
        "samples_per_s_per_device": sum(r.samples_per_s for r in rows) / n,
        "samples_per_s_total": sum(r.samples_per_s for r in rows),
        "flops_per_sample": rows[0].flops_per_sample,
        "achieved_flops_per_s_per_device": sum(r.achieved_flops_per_s for r in rows) / n,
        "peak_flops_per_s_per_device": sum(r.peak_flops_per_s for r in rows) / n,
        "mfu": sum(r.mfu for r in rows) / n,
        "per_rank": [{"rank": r.rank, "samples_per_s": r.samples_per_s, "flops_per_sample": r.flops_per_sample,
                      "peak_flops_per_s": r.peak_flops_per_s, "mfu": r.mfu, **r.extra} for r in rows],
    }


def run_identity(cfg: Config, dist: Any, trainer: Any) -> dict[str, Any]:
    """Settings that make two benchmark JSON files comparable."""
    return {"device": trainer.device.type, "world_size": dist.world_size, "batch_size_per_device": cfg.data.batch_size,
            "crop": cfg.data.crop_size, "backbone": cfg.model.backbone, "output_stride": cfg.model.output_stride,
            "decoder_channels": cfg.model.decoder_channels, "method": cfg.method.label,
            "dtype": str(compute_dtype(trainer)).removeprefix("torch."),
            "zero_stage": int(trainer.ds_config.get("zero_optimization", {}).get("stage", 0)),
            "torch_threads": torch.get_num_threads(), "data_threads": cfg.data.num_threads,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "data": cfg.data.root}
