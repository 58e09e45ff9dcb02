"""Mixed precision: DeepSpeed's three precision blocks and what the trainer does for each.

``deepspeed.torch_autocast``: fp32 weights, convolutions autocast to bf16/fp16; nothing to adapt.
``deepspeed.bf16`` / ``deepspeed.fp16``: DeepSpeed casts the *parameters* to 16 bits and keeps
fp32 master copies in the ZeRO optimizer; buffers keep their dtype. Two consequences handled here:

- BatchNorm would get 16-bit weights next to its fp32 running statistics, a dtype mix
  ``F.batch_norm`` refuses ("expected scalar type BFloat16 but found Float"). Casting the
  buffers too (``data_types.buffer_dtype``) would make it run but keep the running statistics,
  and so the teacher's, in 16 bits. Instead :func:`keep_norm_statistics_fp32` swaps every
  BatchNorm for a subclass that hands ``F.batch_norm`` fp32 copies of its affine weights: the
  statistics stay fp32, the input and output stay 16-bit, and the gradient still reaches the
  16-bit parameter DeepSpeed owns. This is the layout autocast produces (fp32 BN parameters,
  16-bit activations), which every backend supports. State-dict keys are unchanged.
- The EMA teacher must read the fp32 master weights. ZeRO 1/2 keep them as one flat fp32
  partition per parameter group and rank; :class:`ZeroMasterWeights` all-gathers those
  partitions once per group (one collective each) instead of one collective per parameter
  (``deepspeed.utils.safe_get_full_fp32_param``: 341 all-reduces per step for ResNet-101).

fp16 needs CUDA (DeepSpeed's CPU accelerator refuses it here): :func:`check_precision` says so
before any work starts.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

from fastforec.config import ConfigError

Precision = Literal["fp32", "torch_autocast", "bf16", "fp16"]
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                   "fp16": torch.float16}
PARAM_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Plain numbers of DeepSpeed's loss scaler that make a resumed fp16 run scale like the original.
LOSS_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def _enabled(ds: dict[str, Any], block: str) -> bool:
    return bool(ds.get(block, {}).get("enabled", False))


def precision_mode(ds: dict[str, Any]) -> Precision:
    """Which precision block of the ``deepspeed`` config is on; errors name the key to change."""
    on = [b for b in ("torch_autocast", "bf16", "fp16") if _enabled(ds, b)]
    if len(on) > 1:
        raise ConfigError(f"deepspeed: the precision blocks {', '.join(on)} are all enabled; enable one of "
                          "torch_autocast, bf16, fp16 (or none for fp32)")
    if on and on[0] == "torch_autocast":
        name = str(ds["torch_autocast"].get("dtype", "bfloat16"))
        if name not in AUTOCAST_DTYPES:
            raise ConfigError(f"deepspeed.torch_autocast.dtype: must be one of {', '.join(AUTOCAST_DTYPES)}, "
                              f"got {name!r}")
    return on[0] if on else "fp32"  # type: ignore[return-value]


def compute_dtype(ds: dict[str, Any]) -> torch.dtype:
    """The dtype the convolutions run in."""
    mode = precision_mode(ds)
    if mode == "torch_autocast":
        return AUTOCAST_DTYPES[str(ds["torch_autocast"].get("dtype", "bfloat16"))]
    return PARAM_DTYPES.get(mode, torch.float32)


def check_precision(ds: dict[str, Any], device: torch.device) -> None:
    """Fail early, with the key to change, on a precision this device cannot run."""
    if device.type != "cuda" and compute_dtype(ds) == torch.float16 and precision_mode(ds) == "torch_autocast":
        raise ConfigError("deepspeed.torch_autocast.dtype: float16 autocast needs a CUDA GPU, and this run is on the "
                          "CPU; use \"bfloat16\"")
    if precision_mode(ds) == "fp16" and device.type != "cuda":
        raise ConfigError("deepspeed.fp16: DeepSpeed's fp16 mode (16-bit weights with loss scaling) needs a CUDA "
                          "GPU, and this run is on the CPU, where DeepSpeed refuses fp16; set deepspeed.bf16 "
                          "{\"enabled\": true} or deepspeed.torch_autocast {\"enabled\": true, \"dtype\": "
                          "\"bfloat16\"} instead")


def autocast_context(ds: dict[str, Any], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast the engine applies, for code outside it (teacher, evaluation); a no-op in fp32."""
    dtype = compute_dtype(ds)
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# BatchNorm with fp32 statistics next to 16-bit parameters


def _float_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # .float() is differentiable: the gradient flows back into the 16-bit parameter.
    w = bn.weight.float() if bn.weight is not None else None
    b = bn.bias.float() if bn.bias is not None else None
    return w, b


def _average_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Count the batch and return the running-statistics update factor, as ``_BatchNorm`` does:
    ``momentum``, or a cumulative average when momentum is None."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else bn.momentum


def _batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, factor: float) -> torch.Tensor:
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    w, b = _float_affine(bn)
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None, w, b,
                        use_batch_stats, factor, bn.eps)


class Fp32StatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose statistics and arithmetic are fp32 whatever its parameters' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return _batch_norm(self, x, _average_factor(self))


class Fp32StatsSyncBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm likewise (CUDA, several ranks); a world of one falls back to BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = _average_factor(self)
        group = self.process_group or dist.group.WORLD
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1):
            return _batch_norm(self, x, factor)
        w, b = _float_affine(self)
        return SyncBatchNormFunction.apply(x, w, b, self.running_mean, self.running_var, self.eps, factor, group,
                                           dist.get_world_size(group))


_FP32_STATS = {nn.BatchNorm2d: Fp32StatsBatchNorm2d, nn.SyncBatchNorm: Fp32StatsSyncBatchNorm}


def keep_norm_statistics_fp32(module: nn.Module) -> nn.Module:
    """Switch every BatchNorm2d / SyncBatchNorm of ``module`` (in place) to its fp32-statistics
    subclass. Same parameters, buffers and state-dict keys: only ``forward`` changes. Call it
    before DeepSpeed casts the parameters (the buffers must still be fp32 then)."""
    for m in module.modules():
        cls = _FP32_STATS.get(type(m))
        if cls is not None:
            for name, buf in m.named_buffers(recurse=False):
                if buf.is_floating_point() and buf.dtype != torch.float32:
                    raise ValueError(f"BatchNorm buffer {name} is {buf.dtype}, expected float32 statistics")
            m.__class__ = cls  # a subclass adding no state: the instance stays valid
    return module


# ---------------------------------------------------------------------------------------------
# ZeRO 1/2 fp32 master weights, read in bulk


class ZeroMasterWeights:
    """The fp32 master copy of every parameter of a module trained by DeepSpeed ZeRO 1/2.

    ZeRO 1/2 flatten each parameter group into one 16-bit buffer (the module's parameters are
    views into it) and give every rank an equal slice of it as an fp32 partition
    (``single_partition_of_fp32_groups``), which the optimizer updates. :meth:`gather`
    all-gathers those partitions, one collective per group (none in a world of one), and
    returns fp32 views shaped like the parameters, keyed by parameter.
    """

    def __init__(self, optimizer: Any):
        needed = ("bit16_groups", "bit16_groups_flat", "single_partition_of_fp32_groups", "real_dp_process_group")
        missing = [a for a in needed if not hasattr(optimizer, a)]
        if missing:
            raise TypeError(f"{type(optimizer).__name__} is not a ZeRO 1/2 optimizer (no {', '.join(missing)})")
        self.optimizer = optimizer
        self.layout: list[list[tuple[nn.Parameter, int]]] = []  # per group: (parameter, offset in the flat buffer)
        for params, flat in zip(optimizer.bit16_groups, optimizer.bit16_groups_flat):
            group = []
            for p in params:
                # The parameter is a view into the flat buffer: its offset is where its data starts.
                offset = (p.data_ptr() - flat.data_ptr()) // flat.element_size()
                if not 0 <= offset <= flat.numel() - p.numel():
                    raise RuntimeError("a ZeRO parameter is not a view of its group's flat buffer; "
                                       "the fp32 master weights cannot be located")
                group.append((p, offset))
            self.layout.append(group)

    def gather(self) -> dict[nn.Parameter, torch.Tensor]:
        """Every parameter's fp32 master value (a collective: every rank must call it)."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        opt = self.optimizer
        for i, group in enumerate(self.layout):
            part = opt.single_partition_of_fp32_groups[i].detach()
            pg = opt.real_dp_process_group[i]
            world = dist.get_world_size(pg) if dist.is_initialized() else 1
            if world == 1:
                full = part
            else:
                full = torch.empty(world * part.numel(), dtype=part.dtype, device=part.device)
                dist.all_gather_into_tensor(full, part, group=pg)
            for p, offset in group:
                out[p] = full[offset:offset + p.numel()].view(p.shape)
        return out


def loss_scaler_state(optimizer: Any) -> dict[str, float]:
    """The loss scaler's counters (fp16: the dynamic scale) as plain numbers; {} without one."""
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is None:
        return {}
    return {k: float(getattr(scaler, k)) for k in LOSS_SCALER_FIELDS if isinstance(getattr(scaler, k, None),
                                                                                 (int, float))}


def load_loss_scaler_state(optimizer: Any, state: dict[str, float]) -> None:
    scaler = getattr(optimizer, "loss_scaler", None)
    for k, v in state.items():
        if scaler is not None and hasattr(scaler, k):
            setattr(scaler, k, type(getattr(scaler, k))(v))
