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
  partition per parameter group and rank; :class:`MasterWeights` all-gathers those
  partitions once per group (one collective each) instead of one collective per parameter
  (``deepspeed.utils.safe_get_full_fp32_param``: 341 all-reduces per step for ResNet-101). At ZeRO
  stage 0 DeepSpeed wraps the optimizer in its own BF16/FP16 optimizer instead; those keep the
  master weights whole, and :class:`MasterWeights` reads them too. A frozen parameter has no
  master copy (no optimizer holds it): the EMA then reads the module's own weight.

fp16 needs CUDA (DeepSpeed's CPU accelerator refuses it here): :func:`check_precision` says so
before any work starts.

``train.bf16_on_amx`` (the CPU recipes): a CPU run whose ``deepspeed`` block names no precision
block trains in the bf16 block when the CPU has AMX-BF16 and in fp32 otherwise;
:func:`cpu_precision_block` writes the choice into the block, so a run's config.json and
checkpoints say which it was and a resume or an evaluation keeps it.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastforec.config import ConfigError

Precision = Literal["fp32", "torch_autocast", "bf16", "fp16"]
PRECISION_BLOCKS = ("torch_autocast", "bf16", "fp16")
AMX_BF16 = "amx_bf16"  # /proc/cpuinfo's flag for AMX tiles with bf16 matrix products
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
    if "bfloat16" in ds:
        # DeepSpeed reads "bfloat16" as an old name of "bf16" (only when "bf16" is absent); one name
        # for it here, so that the trainer and train.bf16_on_amx see the block the engine will use
        raise ConfigError("deepspeed.bfloat16: write this block as deepspeed.bf16 (DeepSpeed's current name for "
                          "it, the one fastforec reads)")
    if device.type != "cuda" and compute_dtype(ds) == torch.float16 and precision_mode(ds) == "torch_autocast":
        raise ConfigError("deepspeed.torch_autocast.dtype: float16 autocast needs a CUDA GPU, and this run is on the "
                          "CPU; use \"bfloat16\"")
    if precision_mode(ds) == "fp16" and device.type != "cuda":
        raise ConfigError("deepspeed.fp16: DeepSpeed's fp16 mode (16-bit weights with loss scaling) needs a CUDA "
                          "GPU, and this run is on the CPU, where DeepSpeed refuses fp16; set deepspeed.bf16 "
                          "{\"enabled\": true} or deepspeed.torch_autocast {\"enabled\": true, \"dtype\": "
                          "\"bfloat16\"} instead")


def names_precision(ds: dict[str, Any]) -> bool:
    """Whether a deepspeed block writes any precision block (enabled or not): then it, not
    ``train.bf16_on_amx``, says the precision."""
    return any(block in ds for block in PRECISION_BLOCKS)


def cpu_precision_block(ds: dict[str, Any], *, bf16_on_amx: bool, device: torch.device, has_amx: bool = False,
                        started_with: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ds`` with ``train.bf16_on_amx`` applied: on the CPU, when ``ds`` names none of the precision
    blocks, an explicit ``bf16`` block, enabled when the CPU has AMX-BF16 (``has_amx``). Anything
    else (a GPU, the setting off, a precision block written by the user) leaves ``ds`` as it is.

    Why AMX only: its tiles run bf16 convolutions and matmuls several times faster than fp32, and
    the block trains sslbench to the same mIoU as fp32 (docs/results.md, paired seeds); a CPU with
    only AVX-512 bf16 dot products gains less, and one without bf16 units emulates it, slower than
    fp32. ``started_with``: the ``deepspeed`` block of the run this one continues (its checkpoint's
    config, already resolved): its precision is kept, whatever this CPU has, since the optimizer
    state of a bf16 run (fp32 master weights) does not load into an fp32 one, nor the reverse.
    """
    if not bf16_on_amx or device.type != "cpu" or names_precision(ds):
        return ds
    if started_with is not None:
        chosen = {b: started_with[b] for b in PRECISION_BLOCKS if b in started_with} or {"bf16": {"enabled": False}}
    else:
        chosen = {"bf16": {"enabled": has_amx}}
    return {**ds, **copy.deepcopy(chosen)}


def autocast_context(ds: dict[str, Any], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast the engine applies, for code outside it (teacher, evaluation); a no-op in fp32."""
    dtype = compute_dtype(ds)
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def weight_cast_scope(ds: dict[str, Any], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A region around one micro-batch's forward passes in which each fp32 weight is cast to bf16
    once (``torch_autocast`` in bfloat16 only; a no-op otherwise).

    Why: autocast keeps the 16-bit copy of a weight that requires grad only until the outermost
    autocast region ends, and DeepSpeed's engine opens one region per forward. FixMatch, UniMatch
    and UniMatch V2 run the student twice per micro-batch (labeled + weak, then the strong views),
    so every weight was cast twice, and every weight gradient cast back twice. A *disabled*
    autocast around the forwards is the outermost region: the first forward's copies serve the
    second, and nothing else changes dtype (the engine's own region still enables autocast around
    each forward, the losses stay outside). The backward runs after the region ends, so the next
    micro-batch casts the weights again, and after an optimizer step the updated ones.

    Numerics: the two forwards' gradients of a weight now add up in bf16 before their one cast
    back, one more rounding of gradients already computed in bf16. Not for float16: loss-scaled
    fp16 gradients summed in fp16 can overflow where the fp32 sum did not. A student forward under
    ``no_grad`` inside the region would share its cached copy with later forwards: the torch
    pinned here makes cached casts with grad enabled (checked), older versions cached a copy
    without history and the weight lost its gradient; no method runs one. ``train.compile``:
    compiled graphs cast their own weights (the cache is off while tracing), so the region changes
    nothing there."""
    if precision_mode(ds) != "torch_autocast" or compute_dtype(ds) != torch.bfloat16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, enabled=False)


# ---------------------------------------------------------------------------------------------
# BatchNorm with fp32 statistics next to 16-bit parameters


def _float_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # .float() is differentiable: the gradient flows back into the 16-bit parameter.
    w = bn.weight.float() if bn.weight is not None else None
    b = bn.bias.float() if bn.bias is not None else None
    return w, b


def bn_average_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Count the batch and return the running-statistics update factor, as ``_BatchNorm`` does:
    ``momentum``, or a cumulative average when momentum is None."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else bn.momentum


def batch_norm_fp32_stats(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, factor: float) -> torch.Tensor:
    """``bn``'s forward with its affine parameters in fp32 beside fp32 statistics, whatever their
    dtype; ``factor`` from :func:`bn_average_factor`."""
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    w, b = _float_affine(bn)
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None, w, b,
                        use_batch_stats, factor, bn.eps)


class Fp32StatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose statistics and arithmetic are fp32 whatever its parameters' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return batch_norm_fp32_stats(self, x, bn_average_factor(self))


_FP32_STATS = {nn.BatchNorm2d: Fp32StatsBatchNorm2d}


def keep_norm_statistics_fp32(module: nn.Module) -> nn.Module:
    """Switch every BatchNorm2d of ``module`` (in place) to its fp32-statistics
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
# fp32 master weights of DeepSpeed's 16-bit optimizers, read in bulk

# Where each DeepSpeed 16-bit optimizer keeps what: (16-bit parameter lists per group, their flat
# buffers, the fp32 flat copy per group: this rank's partition, or the whole group when unpartitioned).
_FLAT_LAYOUTS = (
    # ZeRO 1/2 (DeepSpeedZeroOptimizer): one fp32 partition per group and rank
    ("bit16_groups", "bit16_groups_flat", "single_partition_of_fp32_groups"),
    # BF16_Optimizer (bf16 with stage 0/1 and fp32 gradient accumulation): partitioned the same way
    ("bf16_groups", "bf16_groups_flat", "fp32_groups_flat_partition"),
    # FP16_Optimizer (fused, stage 0): one whole fp32 flat copy per group
    ("fp16_groups", "fp16_groups_flat", "fp32_groups_flat"),
)


def _flat_layout(optimizer: Any) -> tuple[str, str, str] | None:
    """The entry of _FLAT_LAYOUTS that ``optimizer`` has, or None."""
    return next((names for names in _FLAT_LAYOUTS if all(hasattr(optimizer, a) for a in names)), None)


def _is_unfused(optimizer: Any) -> bool:
    """FP16_UnfusedOptimizer (stage 0): one fp32 tensor per 16-bit parameter, no flat buffer."""
    return hasattr(optimizer, "fp16_groups") and hasattr(optimizer, "fp32_groups")


class MasterWeights:
    """The fp32 master copy of every trained parameter of a module under one of DeepSpeed's 16-bit
    optimizers (the bf16/fp16 blocks at any ZeRO stage up to 2).

    Flat layouts keep each parameter group as one 16-bit buffer (the module's parameters are
    views into it) and an fp32 copy of it, split into equal slices across ranks when partitioned.
    :meth:`gather` all-gathers the slices, one collective per group (none in a world of one),
    and returns fp32 views shaped like the parameters. FP16_UnfusedOptimizer (stage 0) keeps one
    fp32 tensor per parameter: those are returned as they are. Frozen parameters are in no
    optimizer group and so have no master copy: they are absent from :meth:`gather`'s result.
    """

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.per_param: list[tuple[nn.Parameter, torch.Tensor]] | None = None
        self.layout: list[list[tuple[nn.Parameter, int]]] = []  # per group: (parameter, offset in the flat buffer)
        self.fp32_attr = ""
        found = _flat_layout(optimizer)
        if found is None:
            if _is_unfused(optimizer):
                self.per_param = [(p, m) for ps, ms in zip(optimizer.fp16_groups, optimizer.fp32_groups)
                                  for p, m in zip(ps, ms)]
                return
            raise TypeError(f"{type(optimizer).__name__} keeps no fp32 master weights that fastforec can read "
                            "(expected one of DeepSpeed's ZeRO 1/2, BF16 or FP16 optimizers)")
        params_attr, flat_attr, self.fp32_attr = found
        for params, flat in zip(getattr(optimizer, params_attr), getattr(optimizer, flat_attr)):
            group = []
            for p in params:
                # The parameter is a view into the flat buffer: its offset is where its data starts.
                offset = (p.data_ptr() - flat.data_ptr()) // flat.element_size()
                if not 0 <= offset <= flat.numel() - p.numel():
                    raise RuntimeError("a 16-bit parameter is not a view of its group's flat buffer; "
                                       "the fp32 master weights cannot be located")
                group.append((p, offset))
            self.layout.append(group)

    @property
    def num_groups(self) -> int:
        return len(self.layout)

    def gather(self) -> dict[nn.Parameter, torch.Tensor]:
        """Every trained parameter's fp32 master value (a collective: every rank must call it)."""
        if self.per_param is not None:
            return {p: m.detach() for p, m in self.per_param}
        out: dict[nn.Parameter, torch.Tensor] = {}
        opt = self.optimizer
        groups = getattr(opt, "real_dp_process_group", None)
        for i, group in enumerate(self.layout):
            part = getattr(opt, self.fp32_attr)[i].detach()
            pg = groups[i] if groups is not None else None
            world = dist.get_world_size(pg) if groups is not None and dist.is_initialized() else 1
            if world == 1:
                full = part
            else:
                full = torch.empty(world * part.numel(), dtype=part.dtype, device=part.device)
                dist.all_gather_into_tensor(full, part, group=pg)
            for p, offset in group:
                out[p] = full[offset:offset + p.numel()].view(p.shape)
        return out


def fp32_master_tensors(optimizer: Any) -> list[torch.Tensor] | None:
    """The fp32 tensors a DeepSpeed 16-bit optimizer updates (this rank's partitions, flat copies,
    or one per parameter), which a checkpoint must keep; None for a plain torch optimizer."""
    found = _flat_layout(optimizer)
    if found is not None:
        return list(getattr(optimizer, found[2]))
    if _is_unfused(optimizer):
        return [m for group in optimizer.fp32_groups for m in group]
    return None


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
