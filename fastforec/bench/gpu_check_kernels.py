"""`bench --what gpu-check`, section ``kernels``: the Triton kernels against an fp64 reference on
the check's shapes, in fp32 and bf16: errors, time and the fraction of the measured copy
bandwidth. The fp64 reference is the specification itself (``fastforec.losses.*_reference`` with
``dtype=torch.float64``), its gradient taken by autograd.

Imported by ``gpu_check.run`` once TRITON_INTERPRET is settled (on the CPU the kernels must be
defined under the interpreter): the kernels are imported inside the functions.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from fastforec.bench.gpu_check import GIGA, free_memory

if TYPE_CHECKING:
    from fastforec.bench.gpu_check import Sizes

LOGIT_SCALE = 3.0
CONF_THRESH = 0.5  # about half the pixels kept: both branches of the loss are exercised
VALID_FRACTION = 0.9
# Accuracy against fp64, per input dtype: relative error of the loss, relative L2 error of the
# gradient (a bf16 gradient carries its 8-bit mantissa rounding), absolute error of conf.
TOLERANCE = {"float32": {"loss": 1e-5, "grad": 1e-5, "conf": 1e-6},
             "bfloat16": {"loss": 1e-5, "grad": 1e-2, "conf": 1e-6}}
TARGET_BANDWIDTH_FRACTION = 0.7  # a target of the issue (GPU measurements only)


def _ref_pseudo_label(x: Any) -> tuple[Any, Any]:
    """fp64 (label, conf) of kernels.pseudo_label."""
    import torch

    from fastforec.losses import pseudo_label_reference

    label, conf, _ = pseudo_label_reference(x, dtype=torch.float64)
    return label, conf


def _ref_ce(x: Any, label: Any, conf: Any, valid: Any) -> tuple[Any, Any]:
    """fp64 loss and gradient of kernels.pseudo_label_ce."""
    import torch

    from fastforec.losses import pseudo_label_ce_reference

    ce = functools.partial(pseudo_label_ce_reference, dtype=torch.float64)
    return _loss_and_grad(ce, x.double(), label, conf, valid, CONF_THRESH)


def _ref_mse(rec: Any, image: Any, fg: Any, mask: Any) -> tuple[Any, Any]:
    """fp64 loss and gradient (with respect to ``rec``) of kernels.masked_mse."""
    import torch

    from fastforec.losses import masked_mse_reference

    mse = functools.partial(masked_mse_reference, dtype=torch.float64)
    return _loss_and_grad(mse, rec.double(), image, fg, mask)


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
    from fastforec.bench.timing import time_ms
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
            free_memory(device)
    notes = []
    if sizes.big_case is not None:
        rows.extend(big_kernel_case(sizes.big_case, device))
        free_memory(device)
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
