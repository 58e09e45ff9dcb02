"""`bench --what gpu-check`, sections ``step`` and ``vit_step``: training steps on in-memory
batches (a ResNet DeepLabV3+ FOrec step with each speed switch and precision block, UniMatch V2 on
DINO ViTs with and without activation checkpointing): samples/s, MFU against the measured matmul
peak, peak memory, host synchronisations and launches per step.

Imported by ``gpu_check.run`` once the offline packages are importable; torch, DeepSpeed and the
trainer are imported inside the functions.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fastforec.bench.gpu_check import free_memory

if TYPE_CHECKING:
    from fastforec.bench.gpu_check import Sizes

NUM_CLASSES = 21
MAX_STEPS = 10 ** 6  # the poly learning rate stays ~constant over the few timed steps
# Targets of the issue (GPU measurements only).
TARGET_SAMPLES_PER_S = 170.0
TARGET_MFU = 0.4


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # "torch_autocast" or "bf16"
    zero_stage: int
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool
    sync_bn_path: bool = False  # every BatchNorm through torch's SyncBatchNorm function (see force_sync_bn_path)


def step_variants(sizes: Sizes, device: Any) -> tuple[list[Variant], list[str]]:
    cuda = device.type == "cuda"
    out = [Variant("eager, all switches off", "torch_autocast", 0, False, False, False),
           Variant("+ channels_last", "torch_autocast", 0, True, False, False)]
    notes = []
    if cuda:
        out += [Variant("+ cudnn_benchmark", "torch_autocast", 0, False, True, False),
                Variant("+ channels_last + cudnn_benchmark", "torch_autocast", 0, True, True, False)]
    else:
        notes.append("cudnn_benchmark: skipped on the CPU (cuDNN is CUDA only; the switch has no effect)")
    best_eager = out[-1]
    if sizes.compile:
        out.append(Variant(best_eager.name + " + compile", "torch_autocast", 0, best_eager.channels_last,
                           best_eager.cudnn_benchmark, True))
    else:
        notes.append("compile: skipped in --dry-run (inductor compiles for minutes on a CPU)")
    for precision in ("torch_autocast", "bf16"):
        out.append(Variant(f"ZeRO-2, {precision} block", precision, 2, best_eager.channels_last,
                           best_eager.cudnn_benchmark, False))
    if cuda:
        out.append(Variant("SyncBatchNorm's multi-rank path", "torch_autocast", 0, best_eager.channels_last,
                           best_eager.cudnn_benchmark, False, sync_bn_path=True))
    else:
        notes.append("SyncBatchNorm's path: skipped on the CPU (the recipes synchronise BatchNorm on CUDA only)")
    return out, notes


def force_sync_bn_path(module: Any) -> None:
    """Make every BatchNorm2d of ``module`` the trainer's SyncBatchNorm2d and take its synchronised
    path even in a world of one (where it would normalise locally), so that the host syncs and
    launches the recipes' ``model.sync_bn`` costs from two ranks up can be counted on one GPU."""
    from fastforec.models.sync_bn import SyncBatchNorm2d, convert_sync_batchnorm

    convert_sync_batchnorm(module)
    for m in module.modules():
        if isinstance(m, SyncBatchNorm2d):
            m.min_world_size = 1


def _step_config(sizes: Sizes, v: Variant) -> Any:
    from fastforec.config import config_from_dict

    ds: dict[str, Any] = {"zero_optimization": {"stage": v.zero_stage}}
    ds.update({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}} if v.precision == "torch_autocast"
              else {"bf16": {"enabled": True}})
    return config_from_dict({
        "data": {"root": "memory", "crop_size": sizes.crop, "batch_size": sizes.batch},
        "model": {"backbone": sizes.backbone, "output_stride": 16, "decoder_channels": sizes.decoder_channels,
                  "sync_bn": False},
        "method": {"base": "mean_teacher", "aux": "forec", "conf_thresh": 0.0},  # every loss term active
        "optim": {"lr": 1e-3},
        "train": {"name": "gpu_check", "max_steps": MAX_STEPS, "channels_last": v.channels_last,
                  "cudnn_benchmark": v.cudnn_benchmark, "compile": v.compile},
        "deepspeed": ds})


def count_host_syncs(fn: Callable[[], Any], device: Any) -> int | None:
    """Synchronising CUDA calls (``.item()``, device-to-host copies, ...) made by ``fn``, as
    counted by PyTorch's sync debug mode; None on the CPU, where nothing synchronises."""
    import warnings

    import torch

    from fastforec.bench.timing import synchronize

    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def count_launches(fn: Callable[[], Any], device: Any) -> dict[str, int | None]:
    """What ``fn`` asks of the device: ``kernels`` (CUDA kernels, copies and memsets it launched;
    None on the CPU) and ``ops`` (top-level ATen operators dispatched from Python, each at least one
    launch on a GPU: the CPU dry run reports the same count, which checks the reporting)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from fastforec.bench.timing import synchronize

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    ops = sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)
    kernels = None
    if device.type == "cuda":
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"kernels": kernels, "ops": ops}


def measure_step(cfg: Any, *, batch: int, crop: int, warmup: int, steps: int, dist: Any,
                 peak_flops: float, sync_bn_path: bool = False) -> dict[str, Any]:
    """samples/s, MFU, peak memory and host syncs of ``cfg``'s training step on in-memory batches."""
    import torch

    from fastforec.bench.flops import model_step_flops
    from fastforec.bench.timing import run_steps
    from fastforec.trainer import Trainer

    device = dist.device
    data = _memory_batches(cfg, batch=batch, crop=crop, device=device)
    flops_per_sample = model_step_flops(cfg, num_classes=NUM_CLASSES)["total"] / batch
    with tempfile.TemporaryDirectory(prefix="fastforec-gpu-check-") as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp), dist=dist, data=data)
        if sync_bn_path:
            force_sync_bn_path(trainer.student)
        feed = lambda: data.train.next_batch()  # noqa: E731
        start = time.perf_counter()
        run_steps(trainer, feed, warmup)
        warmup_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        window = run_steps(trainer, feed, steps)
        peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        syncs = count_host_syncs(lambda: trainer.train_step(*feed()), device)
        launches = count_launches(lambda: trainer.train_step(*feed()), device)
        trainer = None  # drop the engine before _free (the counted lambdas hold it)
    free_memory(device)
    rate = window.samples_per_s
    return {"samples_per_s": rate, "step_ms": 1e3 * batch / rate, "warmup_s": warmup_s,
            "skipped_steps": window.skipped, "flops_per_sample": flops_per_sample,
            "mfu": rate * flops_per_sample / peak_flops, "peak_memory_bytes": peak_mem,
            "host_syncs_per_step": syncs, "kernel_launches_per_step": launches["kernels"],
            "aten_ops_per_step": launches["ops"]}


def _memory_batches(cfg: Any, *, batch: int, crop: int, device: Any) -> Any:
    from fastforec.data.memory import InMemoryData, MemoryTrainData, memory_manifest, synthetic_batch
    from fastforec.methods import base_of

    views = base_of(cfg.method).strong_views
    batches = [synthetic_batch(batch, crop, NUM_CLASSES, device=device, seed=s, strong_views=views) for s in range(2)]
    return InMemoryData(manifest=memory_manifest(NUM_CLASSES), train=MemoryTrainData(batches))


def measure_baseline(cfg: Any, sizes: Sizes, dist: Any) -> dict[str, Any]:
    """The step as the research repos run it (fastforec.bench.baseline.PlainLoop: fp32,
    ``torch.optim``, no DeepSpeed, no fused losses, a Python EMA) on ``cfg``'s network, method and
    batch (its ``deepspeed`` block is not read): what the variants' ``ratio_vs_baseline`` divides
    by, i.e. the speed-up a user of those repos sees on this GPU."""
    from fastforec.bench.baseline import PRECISION, PlainLoop
    from fastforec.bench.timing import run_steps

    data = _memory_batches(cfg, batch=sizes.batch, crop=sizes.crop, device=dist.device)
    plain = PlainLoop(cfg, num_classes=NUM_CLASSES, fg_classes=list(data.manifest.foreground_classes),
                      device=dist.device, max_steps=MAX_STEPS)
    feed = lambda: data.train.next_batch()  # noqa: E731
    run_steps(plain, feed, sizes.warmup)
    window = run_steps(plain, feed, sizes.steps)
    plain = None
    free_memory(dist.device)
    return {"samples_per_s": window.samples_per_s, "step_ms": 1e3 * sizes.batch / window.samples_per_s,
            "precision": PRECISION, "what": "plain PyTorch loop (fastforec.bench.baseline)"}


def measure_variant(v: Variant, sizes: Sizes, dist: Any, peak_flops: float) -> dict[str, Any]:
    row = measure_step(_step_config(sizes, v), batch=sizes.batch, crop=sizes.crop, warmup=sizes.warmup,
                       steps=sizes.steps, dist=dist, peak_flops=peak_flops, sync_bn_path=v.sync_bn_path)
    return {"variant": v.name, "precision": v.precision, "zero_stage": v.zero_stage,
            "channels_last": v.channels_last, "cudnn_benchmark": v.cudnn_benchmark, "compile": v.compile, **row}


def step_section(sizes: Sizes, dist: Any, peak_flops: float) -> dict[str, Any]:
    variants, notes = step_variants(sizes, dist.device)
    rows = [measure_variant(v, sizes, dist, peak_flops) for v in variants]
    baseline = measure_baseline(_step_config(sizes, variants[0]), sizes, dist)
    for r in rows:
        r["ratio_vs_baseline"] = r["samples_per_s"] / baseline["samples_per_s"]
    best = max(rows, key=lambda r: r["samples_per_s"])
    out = {"model": f"{sizes.backbone} DeepLabV3+ FOrec, OS16, decoder {sizes.decoder_channels}",
           "crop": sizes.crop, "batch_labeled": sizes.batch, "batch_unlabeled": sizes.batch,
           "rows": rows, "baseline": baseline, "notes": notes, "best": best["variant"]}
    if dist.device.type == "cuda":
        out["targets"] = {"samples_per_s": TARGET_SAMPLES_PER_S, "mfu": TARGET_MFU,
                          "met": best["samples_per_s"] >= TARGET_SAMPLES_PER_S and best["mfu"] >= TARGET_MFU}
    return out


# ---------------------------------------------------------------------------------------------
# UniMatch V2 on DINOv2 and DINOv3


@dataclass(frozen=True)
class VitSizes:
    backbones: tuple[str, ...]
    width: float  # model.backbone_width: 1.0 is the released networks'
    crop: int  # DINOv2's; a DINOv3 backbone runs at the nearest multiple of its patch (vit_crop)
    batch: int  # labeled = unlabeled images per step
    warmup: int
    steps: int


# UniMatch V2's VOC setting: crop 518 (DINOv3: 512), 4 + 4 images per GPU
VIT_FULL = VitSizes(backbones=("dinov2_vitb14", "dinov2_vitl14", "dinov3_vitb16"), width=1.0, crop=518, batch=4,
                    warmup=2, steps=5)
VIT_DRY = VitSizes(backbones=("dinov2_vits14", "dinov3_vits16"), width=0.25, crop=28, batch=2, warmup=1, steps=1)
TARGET_VIT_MEMORY_BYTES = 80 * 10 ** 9  # ViT-L at crop 518, 4 + 4 images per GPU, must fit an 80 GB GPU


def vit_crop(sizes: VitSizes, backbone: str) -> int:
    """``sizes.crop`` at the nearest multiple of ``backbone``'s patch (DINOv3: 518 -> 512, 28 -> 32)."""
    from fastforec.config import vit_family

    patch = vit_family(backbone).patch
    return max(1, round(sizes.crop / patch)) * patch


def _vit_config(sizes: VitSizes, backbone: str, checkpointing: bool) -> Any:
    from fastforec.config import config_from_dict

    return config_from_dict({
        "data": {"root": "memory", "crop_size": vit_crop(sizes, backbone), "batch_size": sizes.batch},
        "model": {"backbone": backbone, "decoder": "dpt", "backbone_width": sizes.width, "sync_bn": False,
                  "activation_checkpointing": checkpointing},
        "method": {"name": "mean_teacher", "base": "unimatch_v2", "aux": "none", "conf_thresh": 0.0,
                   "ema_decay": 0.996},
        "optim": {"name": "adamw", "lr": 5e-6, "head_lr_mult": 40.0, "weight_decay": 0.01},
        "train": {"name": "gpu_check_vit", "max_steps": MAX_STEPS},
        "deepspeed": {"zero_optimization": {"stage": 1}, "torch_autocast": {"enabled": True, "dtype": "bfloat16"}}})


def vit_step_section(sizes: VitSizes, dist: Any, peak_flops: float) -> dict[str, Any]:
    """UniMatch V2 steps on DINOv2 and DINOv3 (bf16 autocast, SDPA attention, ZeRO-1, AdamW), with
    and without activation checkpointing; a row that runs out of memory says so instead of failing."""
    import torch

    rows = []
    for backbone in sizes.backbones:
        for checkpointing in (False, True):
            crop = vit_crop(sizes, backbone)
            row = {"backbone": backbone, "activation_checkpointing": checkpointing, "crop": crop}
            try:
                row.update(measure_step(_vit_config(sizes, backbone, checkpointing), batch=sizes.batch,
                                        crop=crop, warmup=sizes.warmup, steps=sizes.steps, dist=dist,
                                        peak_flops=peak_flops))
            except torch.OutOfMemoryError as e:
                free_memory(dist.device)
                row.update({"out_of_memory": str(e).splitlines()[0], "skipped_steps": 0})
            rows.append(row)
    out = {"model": f"UniMatch V2 DPT, width {sizes.width:g}", "crop": sizes.crop, "batch_labeled": sizes.batch,
           "batch_unlabeled": sizes.batch, "rows": rows}
    large = [r for r in rows if r["backbone"] == "dinov2_vitl14" and r.get("peak_memory_bytes") is not None]
    if large:
        out["vitl_fits_80gb"] = {("checkpointing" if r["activation_checkpointing"] else "plain"):
                                 r["peak_memory_bytes"] <= TARGET_VIT_MEMORY_BYTES for r in large}
    return out
