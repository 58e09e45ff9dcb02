"""Train, checkpoint and resume under one precision block; dump what test_precision.py checks.

Run with ``python`` (one rank) or ``torchrun --nproc_per_node 2`` (two gloo ranks). Trainer A takes
``--steps`` steps on fixed, seeded batches and saves a checkpoint after ``--steps // 2``; trainer B
(a fresh process state: new engine, new teacher) restores that checkpoint and takes the remaining
steps on the same batches. Rank 0 writes a JSON file with, per trainer, the losses and weight
digests, plus the dtypes of parameters, BN statistics, teacher and losses, the number of
collectives one bulk read of the fp32 master weights issues against one read per parameter, and
whether both reads agree.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist
from equivalence_harness import digest, harness_setup, train_part

from fastforec.trainer import Trainer

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce",
               "all_to_all_single", "barrier", "_all_gather_base", "_reduce_scatter_base")


class CollectiveCounter:
    """Counts calls of torch.distributed collectives while active (DeepSpeed's comm layer looks
    them up on the module at call time, so its calls are counted too)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Callable] = {}

    def __enter__(self) -> "CollectiveCounter":
        for name in COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is None:
                continue
            self._saved[name] = fn

            def counted(*args: Any, _fn: Callable = fn, **kwargs: Any) -> Any:
                self.count += 1
                return _fn(*args, **kwargs)
            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, fn in self._saved.items():
            setattr(dist, name, fn)


def run_steps(trainer: Trainer, steps: range, parts: list[int], cfg: Any) -> tuple[dict, list[int]]:
    losses, collectives = {}, []
    for step in steps:
        with CollectiveCounter() as counter:
            for part in parts:
                terms = train_part(trainer, cfg, step, part)
                losses[f"{step}.{part}"] = {k: float(v.detach()) for k, v in terms.items()}
                losses[f"{step}.{part}"]["dtypes"] = sorted({str(v.dtype) for v in terms.values()})
        collectives.append(counter.count)
    return losses, collectives


def master_read_check(trainer: Trainer) -> dict[str, Any]:
    """Bulk read vs DeepSpeed's one-collective-per-parameter read of the fp32 master weights."""
    if trainer.master_weights is None:
        return {"bulk": None}
    from deepspeed.utils import safe_get_full_fp32_param

    params = list(trainer.student.parameters())
    with CollectiveCounter() as bulk_count:
        bulk = trainer.master_weights.gather()
    with CollectiveCounter() as per_param_count:
        single = [safe_get_full_fp32_param(p) for p in params]
    # DeepSpeed's helper reads ZeRO partitions only (None at stage 0); at every stage the 16-bit
    # weights are the master weights rounded, which DeepSpeed copies after each optimizer step
    return {"bulk": bulk_count.count, "per_param": per_param_count.count, "params": len(params),
            "groups": trainer.master_weights.num_groups, "optimizer": type(trainer.optimizer).__name__,
            "equal": all(s is None or torch.equal(bulk[p], s) for p, s in zip(params, single)),
            "helper_reads": sum(s is not None for s in single),
            "rounds_to_module": all(torch.equal(bulk[p].to(p.dtype), p.detach()) for p in params),
            "dtype": sorted({str(t.dtype) for t in bulk.values()})}


def dtypes(trainer: Trainer) -> dict[str, list[str]]:
    bn = [m for m in trainer.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    return {"student_params": sorted({str(p.dtype) for p in trainer.student.parameters()}),
            "bn_stats": sorted({str(b.dtype) for m in bn for b in (m.running_mean, m.running_var)}),
            "teacher": sorted({str(t.dtype) for t in trainer.teacher.module.state_dict().values()
                               if t.is_floating_point()})}


def main() -> int:
    args, cfg, info, out = harness_setup(default_steps=4)
    half = args.steps // 2

    a = Trainer(cfg, run_dir=out.parent / "run_a", dist=info)
    parts = [info.rank] if info.world_size > 1 else list(range(a.accum))
    losses_a, collectives = run_steps(a, range(half), parts, cfg)
    ckpt = a.save_checkpoint()
    more, collectives_b = run_steps(a, range(half, args.steps), parts, cfg)
    losses_a.update(more)
    report = {"losses_a": losses_a, "collectives_per_step": collectives + collectives_b,
              "student_a": digest(a.student.state_dict()), "teacher_a": digest(a.teacher.module.state_dict()),
              "dtypes": dtypes(a), "master": master_read_check(a)}
    a.train_data.close()

    b = Trainer(cfg, run_dir=out.parent / "run_b", dist=info, resume=str(ckpt))
    report["resumed_step"] = b.state.step
    report["losses_b"], _ = run_steps(b, range(half, args.steps), parts, cfg)
    report["student_b"] = digest(b.student.state_dict())
    report["teacher_b"] = digest(b.teacher.module.state_dict())
    b.train_data.close()

    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, report)
    if info.is_main:
        out.write_text(json.dumps(gathered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
