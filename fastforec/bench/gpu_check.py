"""`fastforec bench --what gpu-check`: the GPU paths, checked on a real GPU in a few minutes.

    python -m fastforec.cli bench --what gpu-check --json gpu_check.json     # on the GPU node
    python -m fastforec.cli bench --what gpu-check --dry-run                 # the same, CPU-sized

Meant for an offline GPU node that has PyTorch and Triton but not DeepSpeed, its dependencies,
webdataset or fastforec installed: ``tools/build_offline_wheels.sh`` builds those wheels beforehand (on a machine with
the package registry) into ``build/offline_wheels``, and this command unpacks them into a
temporary prefix, placed *after* the node's own packages on ``sys.path``, when an import fails
(:mod:`fastforec.bench.offline_wheels`).
DALI is optional (its section says when it was skipped); the trainer gets its batches from
memory (:mod:`fastforec.data.memory`), so nothing else needs DALI.

Sections, each a table and a key of the JSON file:

- ``ceilings``: the best bf16 matmul (TFLOP/s) and device-to-device copy (GB/s, bytes read +
  written) measured here: the denominators of MFU and of the kernels' bandwidth fraction.
- ``kernels``: the Triton kernels against an fp64 reference on the paper's shapes
  (16x21x512x512, 8x19x712x712), an odd size, channels-last, and one input over 2**31 elements,
  in fp32 and bf16: errors, time (``triton.testing.do_bench``: CUDA events) and the fraction of
  the measured copy bandwidth.
- ``step``: a ResNet-101 DeepLabV3+ FOrec training step at crop 512, 8 labeled + 8 unlabeled,
  bf16 autocast: samples/s, MFU against the measured matmul peak, peak memory, with
  channels_last, cuDNN autotuning and torch.compile off and on; then the same step through
  DeepSpeed ZeRO-2 with the ``torch_autocast`` block and with the ``bf16`` block. Each row also
  counts the host synchronisations of one step (PyTorch's CUDA sync debug mode).
- ``vit_step``: a UniMatch V2 step on DINOv2 ViT-B and ViT-L at crop 518, 4 labeled + 4
  unlabeled (its VOC setting), and on DINOv3 ViT-B/16 at crop 512 (the multiple of its patch 16
  nearest to 518), bf16 autocast, SDPA attention, ZeRO-1, with and without activation
  checkpointing: samples/s, MFU, peak memory (does ViT-L fit an 80 GB GPU?).
- ``dali``: the DALI training pipeline on the GPU when DALI is importable.

This module is the command (sizes, ceilings, DALI, the environment, the run); the sections are
``gpu_check_kernels.py`` and ``gpu_check_steps.py``, the printed tables ``gpu_check_report.py``.
They are imported once the offline packages are on the path, and torch inside the functions:
importing this module needs no third-party package.

``--dry-run`` runs every section on the CPU with small shapes (Triton through its interpreter,
ResNet-18 at crop 32, quarter-width DINOv2 and DINOv3 ViT-S at crop 28 and 32); what cannot run
there says so. The test suite runs it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fastforec.bench.offline_wheels import DEFAULT_WHEELS, ensure_offline_packages

BUDGET_S = 8 * 60  # the whole check must fit in this on one H100/H200-class GPU
TERA, GIGA = 1e12, 1e9
MATMUL_REPEATS = 5


@dataclass(frozen=True)
class Sizes:
    matmul: int  # n of the n x n x n bf16 matmul
    copy_bytes: int
    kernel_cases: tuple[tuple[str, tuple[int, int, int, int], bool], ...]  # (name, (B, C, H, W), channels_last)
    big_case: tuple[int, int, int, int] | None  # logits with more than 2**31 elements
    backbone: str
    crop: int
    batch: int
    decoder_channels: int
    warmup: int
    steps: int
    compile: bool


FULL = Sizes(matmul=8192, copy_bytes=2 ** 30,
             kernel_cases=(("VOC 512", (16, 21, 512, 512), False), ("Cityscapes 712", (8, 19, 712, 712), False),
                           ("odd 97x131", (3, 21, 97, 131), False), ("channels_last 512", (8, 21, 512, 512), True)),
             big_case=(8, 21, 3584, 3584), backbone="resnet101", crop=512, batch=8, decoder_channels=256,
             warmup=3, steps=10, compile=True)
DRY = Sizes(matmul=256, copy_bytes=8 * 2 ** 20,
            kernel_cases=(("small", (2, 21, 16, 24), False), ("odd 13x17", (1, 19, 13, 17), False),
                          ("channels_last", (2, 5, 9, 11), True)),
            big_case=None, backbone="resnet18", crop=32, batch=2, decoder_channels=16, warmup=1, steps=1,
            compile=False)


def free_memory(device: Any) -> None:
    """Collect garbage and return the CUDA allocator's cached blocks, between measurements."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# ceilings


def ceilings(device: Any, sizes: Sizes) -> dict[str, Any]:
    import torch

    from fastforec.bench.timing import time_ms

    n = sizes.matmul
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul_ms = min(time_ms(lambda: torch.mm(a, b), device) for _ in range(MATMUL_REPEATS))
    src = torch.empty(sizes.copy_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), device)
    a = b = src = dst = None  # free the buffers now (the timed lambdas hold them)
    return {"matmul_n": n, "bf16_matmul_tflops": 2 * n ** 3 / (matmul_ms * 1e-3) / TERA,
            "copy_bytes": sizes.copy_bytes, "copy_gbps": 2 * sizes.copy_bytes / (copy_ms * 1e-3) / GIGA}


# ---------------------------------------------------------------------------------------------
# DALI


def dali_section(device: Any, dry_run: bool) -> dict[str, Any]:
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return {"skipped": "DALI is not importable here (nvidia-dali is not installed)"}
    from fastforec.bench.datasets import synthetic_voc_shards
    from fastforec.bench.timing import synchronize
    from fastforec.config import DataConfig
    from fastforec.data import TrainData
    from fastforec.data.manifest import Manifest

    dali_device = "gpu" if device.type == "cuda" else "cpu"
    crop, batch, batches = (64, 2, 4) if dry_run else (512, 8, 30)
    with tempfile.TemporaryDirectory(prefix="fastforec-gpu-check-dali-") as tmp:
        root = synthetic_voc_shards(Path(tmp), num_train=4 * batch * (1 if dry_run else 4), num_labeled=2 * batch,
                                    num_val=2, size=(375, 500), seed=0)
        cfg = DataConfig(root=str(root), crop_size=crop, batch_size=batch, device=dali_device)
        train = TrainData(Manifest.load(root), cfg, rank=0, world_size=1, seed=0, with_unlabeled=True,
                          device=dali_device)
        try:
            train.next_batch()  # build + first batch
            synchronize(device)
            start = time.perf_counter()
            for _ in range(batches):
                labeled, unlabeled = train.next_batch()
            synchronize(device)
            seconds = time.perf_counter() - start
            on = str(unlabeled["strong"].device)
        finally:
            train.close()
    out = {"device": dali_device, "crop": crop, "batch": batch, "samples_per_s": batches * batch / seconds,
           "tensor_device": on}
    if dry_run:
        out["note"] = "--dry-run: DALI's CPU backend (the GPU graph needs CUDA)"
    return out


# ---------------------------------------------------------------------------------------------
# the command


def _environment(device: Any, packages: dict[str, Any]) -> dict[str, Any]:
    import torch

    versions = {}
    for name in ("torch", "triton", "deepspeed", "timm", "nvidia.dali"):
        try:
            versions[name] = getattr(__import__(name, fromlist=["__version__"]), "__version__", "?")
        except ImportError:
            versions[name] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {"device": str(device), "device_name": name, "versions": versions, "offline_packages": packages,
            "python": sys.version.split()[0]}


def run(args: argparse.Namespace) -> int:
    dry_run = bool(args.dry_run)
    wheels = Path(args.wheels) if args.wheels else DEFAULT_WHEELS
    packages = ensure_offline_packages(wheels)
    if "error" in packages or packages.get("still_missing"):
        print(f"error: {packages.get('error') or 'still missing after unpacking: ' + str(packages['still_missing'])}",
              file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available() and not dry_run:
        print("error: no CUDA GPU here; run with --dry-run for the CPU-sized check", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        # the Triton kernels run in the interpreter; it must be on before they are defined
        os.environ["TRITON_INTERPRET"] = "1"
    from fastforec.bench.gpu_check_kernels import kernel_section
    from fastforec.bench.gpu_check_report import print_tables
    from fastforec.bench.gpu_check_steps import VIT_DRY, VIT_FULL, step_section, vit_step_section
    from fastforec.distributed import init_distributed

    start = time.perf_counter()
    sizes = DRY if dry_run else FULL
    dist = init_distributed(None)
    device = dist.device
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    result: dict[str, Any] = {"dry_run": dry_run, "environment": _environment(device, packages)}
    result["ceilings"] = timed("ceilings", lambda: ceilings(device, sizes))
    result["kernels"] = timed("kernels", lambda: kernel_section(device, sizes, result["ceilings"]["copy_gbps"]))
    peak = result["ceilings"]["bf16_matmul_tflops"] * TERA
    result["step"] = timed("step", lambda: step_section(sizes, dist, peak))
    result["vit_step"] = timed("vit_step", lambda: vit_step_section(VIT_DRY if dry_run else VIT_FULL, dist, peak))
    result["dali"] = timed("dali", lambda: dali_section(device, dry_run))
    result["section_seconds"] = timings
    result["elapsed_s"] = time.perf_counter() - start
    result["within_budget"] = result["elapsed_s"] <= BUDGET_S
    result["ok"] = result["kernels"]["all_ok"] and all(r["skipped_steps"] == 0 for r in
                                                       result["step"]["rows"] + result["vit_step"]["rows"])
    print_tables(result)
    if args.json_out:
        from fastforec.atomic import atomic_write_json

        atomic_write_json(args.json_out, json.loads(json.dumps(result, default=str)))
    return 0 if result["ok"] else 1
