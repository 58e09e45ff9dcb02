"""`fastforec bench --what gpu-check`: the GPU paths, checked on a real GPU in a few minutes.

    python -m fastforec.cli bench --what gpu-check --json gpu_check.json     # on the GPU node
    python -m fastforec.cli bench --what gpu-check --dry-run                 # the same, CPU-sized

Meant for an offline GPU node that has PyTorch and Triton but not DeepSpeed, its dependencies,
webdataset or fastforec installed: ``tools/build_offline_wheels.sh`` builds those wheels beforehand (on a machine with
the package registry) into ``build/offline_wheels``, and this command unpacks them into a
temporary prefix, placed *after* the node's own packages on ``sys.path``, when an import fails.
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
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WHEELS = REPO / "build" / "offline_wheels"
# What the check imports that an offline GPU node may lack (module names), from the wheels.
# fastforec_kernels: the folder kernels/ installs under that name, so an uninstalled tree needs
# fastforec's own wheel (built from this tree by the same script).
OFFLINE_MODULES = ("deepspeed", "hjson", "pydantic", "rich", "webdataset", "fastforec_kernels")
BUDGET_S = 8 * 60  # the whole check must fit in this on one H100/H200-class GPU
TERA, GIGA = 1e12, 1e9
NUM_CLASSES = 21
LOGIT_SCALE = 3.0
CONF_THRESH = 0.5  # about half the pixels kept: both branches of the loss are exercised
VALID_FRACTION = 0.9
MATMUL_REPEATS = 5
CPU_REPEATS = 3
# Accuracy against fp64, per input dtype: relative error of the loss, relative L2 error of the
# gradient (a bf16 gradient carries its 8-bit mantissa rounding), absolute error of conf.
TOLERANCE = {"float32": {"loss": 1e-5, "grad": 1e-5, "conf": 1e-6},
             "bfloat16": {"loss": 1e-5, "grad": 1e-2, "conf": 1e-6}}
# Targets of the issue (GPU measurements only).
TARGET_SAMPLES_PER_S = 170.0
TARGET_MFU = 0.4
TARGET_BANDWIDTH_FRACTION = 0.7
MAX_STEPS = 10 ** 6  # the poly learning rate stays ~constant over the few timed steps


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


# ---------------------------------------------------------------------------------------------
# offline packages


def ensure_offline_packages(wheels: Path, modules: tuple[str, ...] = OFFLINE_MODULES) -> dict[str, Any]:
    """Make ``modules`` importable: when one is missing, unpack every wheel of ``wheels`` into a
    temporary prefix appended to ``sys.path`` (and PYTHONPATH, for child processes). Appended,
    not prepended: a package the node has (torch, numpy, typing_extensions) is never shadowed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    report: dict[str, Any] = {"missing": missing, "prefix": None, "wheels": []}
    if not missing:
        return report
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        report["error"] = (f"{', '.join(missing)} not importable and no wheels in '{wheels}'; build them with "
                           "tools/build_offline_wheels.sh on a machine with the package registry")
        return report
    prefix = Path(tempfile.mkdtemp(prefix="fastforec-wheels-"))
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:  # a wheel is a zip of the installed tree
            z.extractall(prefix)
    sys.path.append(str(prefix))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(prefix)) if p)
    importlib.invalidate_caches()
    report.update(prefix=str(prefix), wheels=[w.name for w in found],
                  still_missing=[m for m in missing if importlib.util.find_spec(m) is None])
    return report


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: Any, *, grad_to_none: list | None = None) -> float:
    """Median milliseconds of ``fn``: CUDA events through ``triton.testing.do_bench`` on a GPU,
    the median of a few wall-clock runs on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(CPU_REPEATS):
        for t in grad_to_none or []:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ---------------------------------------------------------------------------------------------
# ceilings


def ceilings(device: Any, sizes: Sizes) -> dict[str, Any]:
    import torch

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
# kernels against fp64


def _ref_pseudo_label(x: Any) -> tuple[Any, Any]:
    import torch

    prob = torch.softmax(x.double(), dim=1)
    conf, label = prob.max(dim=1)
    return label, conf


def _ref_ce(x: Any, label: Any, conf: Any, valid: Any) -> tuple[Any, Any]:
    """fp64 loss and gradient of kernels.pseudo_label_ce (gradient written out analytically)."""
    import torch

    x64 = x.double()
    logp = torch.log_softmax(x64, dim=1)
    keep = (valid & (conf > CONF_THRESH)).double()
    n = valid.sum().clamp_min(1).double()
    nll = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
    grad = logp.exp_()
    grad.scatter_add_(1, label.unsqueeze(1), torch.full_like(nll, -1.0).unsqueeze(1))
    grad.mul_((keep / n).unsqueeze(1))
    return (nll * keep).sum() / n, grad


def _ref_mse(rec: Any, image: Any, fg: Any, mask: Any) -> tuple[Any, Any]:
    diff = (rec.double() - image.double() * fg.unsqueeze(1)) * mask.unsqueeze(1)
    denom = 3 * mask.sum().clamp_min(1).double()
    return diff.pow(2).sum() / denom, 2 * diff / denom


def _rel_l2(a: Any, ref: Any) -> float:
    return float((a.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def _kernel_inputs(shape: tuple[int, int, int, int], dtype: Any, channels_last: bool, device: Any,
                   seed: int) -> dict[str, Any]:
    import torch

    b, c, h, w = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def rand(*s: int) -> Any:
        return torch.rand(s, generator=gen, device=device)
    logits = (torch.randn((b, c, h, w), generator=gen, device=device) * LOGIT_SCALE).to(dtype).contiguous(
        memory_format=fmt)
    return {"logits": logits, "label": torch.randint(0, c, (b, h, w), generator=gen, device=device),
            "conf": rand(b, h, w), "valid": rand(b, h, w) < VALID_FRACTION,
            "rec": rand(b, 3, h, w).to(dtype).contiguous(memory_format=fmt),
            "image": rand(b, 3, h, w).to(dtype).contiguous(memory_format=fmt),
            "fg": rand(b, h, w) < 0.5, "mask": rand(b, h, w) < VALID_FRACTION}


def _loss_and_grad(fn: Callable[..., Any], x: Any, *rest: Any) -> tuple[Any, Any]:
    leaf = x.detach().requires_grad_()
    loss = fn(leaf, *rest)
    loss.backward()
    return loss.detach(), leaf.grad


def kernel_case(name: str, shape: tuple[int, int, int, int], channels_last: bool, dtype: Any, device: Any,
                copy_gbps: float | None) -> list[dict[str, Any]]:
    """The three kernels on one shape: errors against fp64, time, bandwidth fraction."""
    import fastforec_kernels as kernels
    from fastforec.bench.kernels import masked_mse_bytes, pseudo_label_bytes, pseudo_label_ce_bytes
    from fastforec_kernels._autograd import gradient_in_backward

    t = _kernel_inputs(shape, dtype, channels_last, device, seed=sum(shape))
    b, c, h, w = shape
    pixels, elem = b * h * w, t["logits"].element_size()
    dname = str(dtype).removeprefix("torch.")
    tol = TOLERANCE[dname]
    deferred = gradient_in_backward(t["logits"])
    rows = []

    label, conf, _ = kernels.pseudo_label(t["logits"], backend="triton")
    ref_label, ref_conf = _ref_pseudo_label(t["logits"])
    errors = {"label_mismatch": int((label != ref_label).sum()), "conf_abs": float((conf - ref_conf).abs().max())}
    rows.append({"kernel": "pseudo_label", "errors": errors,
                 "ok": errors["label_mismatch"] == 0 and errors["conf_abs"] <= tol["conf"],
                 "ms": time_ms(lambda: kernels.pseudo_label(t["logits"], backend="triton"), device),
                 "bytes": pseudo_label_bytes(pixels=pixels, classes=c, elem=elem)})

    ce_args = (t["label"], t["conf"], t["valid"], CONF_THRESH)
    loss, grad = _loss_and_grad(lambda x, *r: kernels.pseudo_label_ce(x, *r, backend="triton"), t["logits"], *ce_args)
    ref_loss, ref_grad = _ref_ce(t["logits"], t["label"], t["conf"], t["valid"])
    errors = {"loss_rel": float(abs(loss.double() - ref_loss) / ref_loss), "grad_rel_l2": _rel_l2(grad, ref_grad)}
    del grad, ref_grad
    leaf = t["logits"].detach().requires_grad_()
    rows.append({"kernel": "pseudo_label_ce", "errors": errors,
                 "ok": errors["loss_rel"] <= tol["loss"] and errors["grad_rel_l2"] <= tol["grad"],
                 "ms": time_ms(lambda: kernels.pseudo_label_ce(leaf, *ce_args, backend="triton").backward(), device,
                               grad_to_none=[leaf]),
                 "bytes": pseudo_label_ce_bytes(pixels=pixels, classes=c, elem=elem, deferred=deferred)})
    del leaf

    mse_args = (t["image"], t["fg"], t["mask"])
    loss, grad = _loss_and_grad(lambda x, *r: kernels.masked_mse(x, *r, backend="triton"), t["rec"], *mse_args)
    ref_loss, ref_grad = _ref_mse(t["rec"], *mse_args)
    errors = {"loss_rel": float(abs(loss.double() - ref_loss) / ref_loss), "grad_rel_l2": _rel_l2(grad, ref_grad)}
    leaf = t["rec"].detach().requires_grad_()
    rows.append({"kernel": "masked_mse", "errors": errors,
                 "ok": errors["loss_rel"] <= tol["loss"] and errors["grad_rel_l2"] <= tol["grad"],
                 "ms": time_ms(lambda: kernels.masked_mse(leaf, *mse_args, backend="triton").backward(), device,
                               grad_to_none=[leaf]),
                 "bytes": masked_mse_bytes(pixels=pixels, elem=elem, deferred=deferred)})
    for r in rows:
        r.update(case=name, shape=list(shape), channels_last=channels_last, dtype=dname)
        r["gbps"] = r["bytes"] / (r["ms"] * 1e-3) / GIGA
        r["bandwidth_fraction"] = r["gbps"] / copy_gbps if copy_gbps else None
    t = None  # free the inputs now (the timed lambdas hold them)
    return rows


def big_kernel_case(shape: tuple[int, int, int, int], device: Any) -> list[dict[str, Any]]:
    """Logits over 2**31 elements (bf16): the last sample, whose offsets cross 2**31, against fp64.

    Only that sample is valid, so the loss and its gradient are those of the sample alone."""
    import torch

    import fastforec_kernels as kernels

    b, c, h, w = shape
    gen = torch.Generator(device=device).manual_seed(1)
    logits = (torch.randn((b, c, h, w), generator=gen, device=device, dtype=torch.bfloat16) * LOGIT_SCALE)
    last = slice(b - 1, b)
    rows = []
    label, conf, _ = kernels.pseudo_label(logits, backend="triton")
    ref_label, ref_conf = _ref_pseudo_label(logits[last])
    errors = {"label_mismatch": int((label[last] != ref_label).sum()),
              "conf_abs": float((conf[last] - ref_conf).abs().max())}
    rows.append({"kernel": "pseudo_label", "errors": errors,
                 "ok": errors["label_mismatch"] == 0 and errors["conf_abs"] <= TOLERANCE["bfloat16"]["conf"]})
    del label, conf, ref_label, ref_conf
    target = torch.randint(0, c, (b, h, w), generator=gen, device=device)
    conf = torch.rand((b, h, w), generator=gen, device=device)
    valid = torch.zeros((b, h, w), dtype=torch.bool, device=device)
    valid[last] = True
    loss, grad = _loss_and_grad(lambda x, *r: kernels.pseudo_label_ce(x, *r, backend="triton"), logits, target, conf,
                                valid, CONF_THRESH)
    ref_loss, ref_grad = _ref_ce(logits[last], target[last], conf[last], valid[last])
    errors = {"loss_rel": float(abs(loss.double() - ref_loss) / ref_loss),
              "grad_rel_l2": _rel_l2(grad[last], ref_grad), "grad_other_nonzero": int(grad[:-1].count_nonzero())}
    tol = TOLERANCE["bfloat16"]
    rows.append({"kernel": "pseudo_label_ce", "errors": errors,
                 "ok": errors["loss_rel"] <= tol["loss"] and errors["grad_rel_l2"] <= tol["grad"]
                 and errors["grad_other_nonzero"] == 0})
    for r in rows:
        r.update(case=f"> 2^31 elements ({logits.numel():,})", shape=list(shape), channels_last=False,
                 dtype="bfloat16", ms=None, gbps=None, bandwidth_fraction=None)
    return rows


def kernel_section(device: Any, sizes: Sizes, copy_gbps: float) -> dict[str, Any]:
    import torch

    rows = []
    for name, shape, channels_last in sizes.kernel_cases:
        for dtype in (torch.float32, torch.bfloat16):
            rows.extend(kernel_case(name, shape, channels_last, dtype, device,
                                    copy_gbps if device.type == "cuda" else None))
            _free(device)
    notes = []
    if sizes.big_case is not None:
        rows.extend(big_kernel_case(sizes.big_case, device))
        _free(device)
    else:
        notes.append("input over 2^31 elements: skipped in --dry-run (4.3 GB of logits; the Triton interpreter "
                     "would take hours)")
    out: dict[str, Any] = {"rows": rows, "all_ok": all(r["ok"] for r in rows), "notes": notes}
    if device.type == "cuda":
        timed_losses = [r for r in rows if r["kernel"] != "pseudo_label" and r["bandwidth_fraction"] is not None]
        out["bandwidth_target"] = {"fraction_of_copy": TARGET_BANDWIDTH_FRACTION, "kernels": "fused losses",
                                   "met": all(r["bandwidth_fraction"] >= TARGET_BANDWIDTH_FRACTION
                                              for r in timed_losses)}
    else:
        notes.append("times are the Triton interpreter's: no bandwidth fraction on the CPU")
    return out


# ---------------------------------------------------------------------------------------------
# training step


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
        "method": {"name": "forec", "conf_thresh": 0.0},  # every loss term active on random batches
        "optim": {"lr": 1e-3},
        "train": {"name": "gpu_check", "max_steps": MAX_STEPS, "channels_last": v.channels_last,
                  "cudnn_benchmark": v.cudnn_benchmark, "compile": v.compile},
        "deepspeed": ds})


def _free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def count_host_syncs(fn: Callable[[], Any], device: Any) -> int | None:
    """Synchronising CUDA calls (``.item()``, device-to-host copies, ...) made by ``fn``, as
    counted by PyTorch's sync debug mode; None on the CPU, where nothing synchronises."""
    import warnings

    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
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

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
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
    from fastforec.data.memory import InMemoryData, MemoryTrainData, memory_manifest, synthetic_batch
    from fastforec.trainer import Trainer

    device = dist.device
    views = cfg.method.strong_views
    batches = [synthetic_batch(batch, crop, NUM_CLASSES, device=device, seed=s, strong_views=views) for s in range(2)]
    data = InMemoryData(manifest=memory_manifest(NUM_CLASSES), train=MemoryTrainData(batches))
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
    _free(device)
    rate = window.samples_per_s
    return {"samples_per_s": rate, "step_ms": 1e3 * batch / rate, "warmup_s": warmup_s,
            "skipped_steps": window.skipped, "flops_per_sample": flops_per_sample,
            "mfu": rate * flops_per_sample / peak_flops, "peak_memory_bytes": peak_mem,
            "host_syncs_per_step": syncs, "kernel_launches_per_step": launches["kernels"],
            "aten_ops_per_step": launches["ops"]}


def measure_variant(v: Variant, sizes: Sizes, dist: Any, peak_flops: float) -> dict[str, Any]:
    row = measure_step(_step_config(sizes, v), batch=sizes.batch, crop=sizes.crop, warmup=sizes.warmup,
                       steps=sizes.steps, dist=dist, peak_flops=peak_flops, sync_bn_path=v.sync_bn_path)
    return {"variant": v.name, "precision": v.precision, "zero_stage": v.zero_stage,
            "channels_last": v.channels_last, "cudnn_benchmark": v.cudnn_benchmark, "compile": v.compile, **row}


def step_section(sizes: Sizes, dist: Any, peak_flops: float) -> dict[str, Any]:
    variants, notes = step_variants(sizes, dist.device)
    rows = [measure_variant(v, sizes, dist, peak_flops) for v in variants]
    best = max(rows, key=lambda r: r["samples_per_s"])
    out = {"model": f"{sizes.backbone} DeepLabV3+ FOrec, OS16, decoder {sizes.decoder_channels}",
           "crop": sizes.crop, "batch_labeled": sizes.batch, "batch_unlabeled": sizes.batch,
           "rows": rows, "notes": notes, "best": best["variant"]}
    if dist.device.type == "cuda":
        out["targets"] = {"samples_per_s": TARGET_SAMPLES_PER_S, "mfu": TARGET_MFU,
                          "met": best["samples_per_s"] >= TARGET_SAMPLES_PER_S and best["mfu"] >= TARGET_MFU}
    return out


# ---------------------------------------------------------------------------------------------
# UniMatch V2 on DINOv2


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
                _free(dist.device)
                row.update({"out_of_memory": str(e).splitlines()[0], "skipped_steps": 0})
            rows.append(row)
    out = {"model": f"UniMatch V2 DPT, width {sizes.width:g}", "crop": sizes.crop, "batch_labeled": sizes.batch,
           "batch_unlabeled": sizes.batch, "rows": rows}
    large = [r for r in rows if r["backbone"] == "dinov2_vitl14" and r.get("peak_memory_bytes") is not None]
    if large:
        out["vitl_fits_80gb"] = {("checkpointing" if r["activation_checkpointing"] else "plain"):
                                 r["peak_memory_bytes"] <= TARGET_VIT_MEMORY_BYTES for r in large}
    return out


# ---------------------------------------------------------------------------------------------
# DALI


def dali_section(device: Any, dry_run: bool) -> dict[str, Any]:
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return {"skipped": "DALI is not importable here (nvidia-dali is not installed)"}
    from fastforec.bench.datasets import synthetic_voc_shards
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
            _sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                labeled, unlabeled = train.next_batch()
            _sync(device)
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
# report


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _print_tables(result: dict[str, Any]) -> None:
    from rich.table import Table

    from fastforec.bench.tables import print_rich

    c = result["ceilings"]
    print_rich(f"[bold]gpu-check[/bold] on {result['environment']['device_name']} "
               f"({'dry run' if result['dry_run'] else 'full'}), {result['elapsed_s']:.0f} s")
    print_rich(f"ceilings: bf16 matmul {c['bf16_matmul_tflops']:.3g} TFLOP/s (n={c['matmul_n']}), "
               f"copy {c['copy_gbps']:.1f} GB/s (read + write)")
    k = result["kernels"]
    table = Table(title="Triton kernels vs fp64")
    for col in ("case", "dtype", "kernel", "errors", "ms", "GB/s", "of copy", "ok"):
        table.add_column(col, justify="right" if col in ("ms", "GB/s", "of copy") else "left")
    for r in k["rows"]:
        errs = ", ".join(f"{n}={v:.2g}" for n, v in r["errors"].items())
        table.add_row(r["case"], r["dtype"], r["kernel"], errs, "-" if r["ms"] is None else f"{r['ms']:.3f}",
                      "-" if r["gbps"] is None else f"{r['gbps']:.0f}",
                      "-" if r["bandwidth_fraction"] is None else f"{100 * r['bandwidth_fraction']:.0f}%",
                      "yes" if r["ok"] else "[red]NO")
    print_rich(table)
    s = result["step"]
    table = Table(title=f"training step: {s['model']}, crop {s['crop']}, {s['batch_labeled']} labeled + "
                        f"{s['batch_unlabeled']} unlabeled")
    for col in ("variant", "samples/s", "ms/step", "MFU", "peak GiB", "host syncs/step", "launches/step",
                "ATen ops/step", "warm-up s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in s["rows"]:
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2 ** 30:.1f}"
        table.add_row(r["variant"], f"{r['samples_per_s']:.2f}", f"{r['step_ms']:.0f}", f"{100 * r['mfu']:.1f}%",
                      mem, _count(r["host_syncs_per_step"]), _count(r["kernel_launches_per_step"]),
                      _count(r["aten_ops_per_step"]), f"{r['warmup_s']:.1f}")
    print_rich(table)
    v = result["vit_step"]
    crops = " / ".join(dict.fromkeys(str(r["crop"]) for r in v["rows"]))  # DINOv2's, then DINOv3's
    table = Table(title=f"training step: {v['model']}, crop {crops}, {v['batch_labeled']} labeled + "
                        f"{v['batch_unlabeled']} unlabeled, bf16 autocast, ZeRO-1")
    for col in ("backbone", "checkpointing", "samples/s", "ms/step", "MFU", "peak GiB", "host syncs/step",
                "launches/step", "ATen ops/step"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in v["rows"]:
        if "out_of_memory" in r:
            table.add_row(r["backbone"], str(r["activation_checkpointing"]), "out of memory", *["-"] * 6)
            continue
        mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2 ** 30:.1f}"
        table.add_row(r["backbone"], str(r["activation_checkpointing"]), f"{r['samples_per_s']:.2f}",
                      f"{r['step_ms']:.0f}", f"{100 * r['mfu']:.1f}%", mem, _count(r["host_syncs_per_step"]),
                      _count(r["kernel_launches_per_step"]), _count(r["aten_ops_per_step"]))
    print_rich(table)
    for note in k["notes"] + s["notes"]:
        print_rich(f"note: {note}")
    d = result["dali"]
    print_rich(f"DALI: {d['skipped']}" if "skipped" in d else
               f"DALI {d['device']} pipeline: {d['samples_per_s']:.1f} samples/s at crop {d['crop']} "
               f"(tensors on {d['tensor_device']})" + (f"; {d['note']}" if "note" in d else ""))


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
    _print_tables(result)
    if args.json_out:
        from fastforec.atomic import atomic_write_json

        atomic_write_json(args.json_out, json.loads(json.dumps(result, default=str)))
    return 0 if result["ok"] else 1
