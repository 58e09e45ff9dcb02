"""Train a few steps on fixed, seeded batches and dump losses and weights (rank 0).

Used by test_distributed.py: 2 ranks x batch B must match 1 rank x batch B x 2 accumulation
steps, since the micro-batches are the same (rank r <-> micro-batch r) and so are the dropout
masks (the torch RNG is re-seeded per micro-batch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastforec.config import Config, load_config
from fastforec.distributed import DistInfo, init_distributed
from fastforec.trainer import Trainer


def make_batch(step: int, part: int, *, batch: int, crop: int, num_classes: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1000 * step + part)
    label = torch.randint(0, num_classes, (batch, crop, crop), generator=g)
    label[:, :3] = 255
    weak = torch.rand(batch, 3, crop, crop, generator=g)
    valid = torch.ones(batch, crop, crop, dtype=torch.bool)
    valid[:, -5:] = False
    box = torch.zeros(batch, crop, crop, dtype=torch.bool)
    box[::2, 4:20, 6:30] = True
    labeled = {"image": torch.rand(batch, 3, crop, crop, generator=g), "label": label}
    unlabeled = {"weak": weak, "strong": (0.7 * weak + 0.2).clamp(0, 1), "valid": valid, "box": box}
    return labeled, unlabeled


def two_view_batch(*, batch: int, crop: int, num_classes: int) -> tuple[dict, dict]:
    """``make_batch`` with a second strong view and a box of its own on the other samples
    (UniMatch, UniMatch V2)."""
    labeled, unlabeled = make_batch(0, 0, batch=batch, crop=crop, num_classes=num_classes)
    unlabeled["strong2"] = (0.5 * unlabeled["weak"] + 0.4).clamp(0, 1)
    box2 = torch.zeros_like(unlabeled["box"])
    box2[1::2, 10:30, 2:20] = True
    unlabeled["box2"] = box2
    return labeled, unlabeled


def kept_ce(logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
            thresh: float) -> float:
    """UniMatch's unlabeled term: CE over pixels with conf >= thresh, / valid pixels. (The fused
    kernel keeps conf > thresh: equal unless a confidence is exactly the threshold, which the
    tests' thresholds, between two distinct confidences, never are.)"""
    keep = (conf > thresh) & valid
    return float((torch.nn.functional.cross_entropy(logits, label, reduction="none") * keep).sum() / valid.sum())


def masked_mse(rec: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((rec - target) ** 2 * mask[:, None]).sum() / (3 * mask.sum()))


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train_part(trainer: Trainer, cfg: Config, step: int, part: int) -> dict[str, torch.Tensor]:
    """One micro-batch of the deterministic synthetic stream: part ``part`` of step ``step``."""
    torch.manual_seed(10 * step + part)
    labeled, unlabeled = make_batch(step, part, batch=cfg.data.batch_size, crop=cfg.data.crop_size,
                                    num_classes=trainer.num_classes)
    terms = trainer.train_step(labeled, unlabeled)
    assert terms is not None, f"non-finite loss at step {step}, part {part}"
    return terms


def harness_setup(*, default_steps: int) -> tuple[argparse.Namespace, Config, DistInfo, Path]:
    """The harnesses' shared command line (--config, --set, --out, --steps), config and process group."""
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=default_steps)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None)
    args = p.parse_args()
    return args, load_config(args.config, args.overrides), init_distributed(args.local_rank), Path(args.out)


def main() -> int:
    args, cfg, info, out = harness_setup(default_steps=2)
    trainer = Trainer(cfg, run_dir=out.parent / "harness_run", dist=info)
    parts = [info.rank] if info.world_size > 1 else list(range(trainer.accum))
    losses = {}
    for step in range(args.steps):
        for part in parts:
            terms = train_part(trainer, cfg, step, part)
            losses[f"{step}.{part}"] = {k: float(v.detach()) for k, v in terms.items()}
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, {"losses": losses, "teacher": digest(trainer.teacher.module.state_dict()),
                                      "student": digest(trainer.student.state_dict())})
    if info.is_main:
        merged = {k: v for g in gathered for k, v in g["losses"].items()}
        out.write_text(json.dumps({"losses": merged, "teacher_digests": [g["teacher"] for g in gathered],
                                   "student_digests": [g["student"] for g in gathered]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
