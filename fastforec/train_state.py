"""The stateful parts of a training run that are not modules: each has ``state_dict`` /
``load_state_dict`` (as torch modules, optimizers and schedulers do), and
:mod:`fastforec.checkpoint` saves and restores them all.

What a resumed run must get back, and who owns it:

- :class:`TrainState`: optimizer steps, the data position (micro-batches consumed, kept only
  here: the loader is told where to start, ``TrainData.seek``), scores, non-finite counters;
- :class:`OptimizerState`: the optimizer (for ZeRO its inner SGD state and fp32 partition);
- :class:`EngineCounters`: DeepSpeed's step counters (they drive its accumulation boundary);
- :class:`RngState`: torch's CPU and CUDA generators (dropout in the UniMatch feature stream).

The student, the teacher and the LR scheduler are torch objects with their own state dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fastforec.config import ConfigError
from fastforec.precision import fp32_master_tensors, load_loss_scaler_state, loss_scaler_state


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Score:
    """One evaluated model's mIoU history (the student's, or the teacher's)."""

    best_miou: float = -1.0
    best_epoch: int = -1
    miou_last: float = float("nan")

    def update(self, miou: float, epoch: int) -> None:
        self.miou_last = miou
        if miou > self.best_miou:
            self.best_miou, self.best_epoch = miou, epoch


@dataclass
class TrainState:
    """The trainer's position: what it has done, and where the next batch comes from."""

    steps_per_epoch: int  # micro-batches per epoch of this run's data: what ``batches`` counts in
    step: int = 0  # optimizer steps done
    batches: int = 0  # micro-batches consumed (skipped non-finite ones included): the data position
    scores: dict[str, Score] = dataclasses.field(default_factory=dict)  # per evaluated model
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0
    # the training data's identity (Manifest.identity: a sha256 over every shard's sha256),
    # whatever its path ("" in checkpoints from before it was recorded)
    data_identity: str = ""
    empty_label_batches: int = 0  # labeled micro-batches with no valid pixel (all 255)

    @property
    def epoch(self) -> int:
        """The epoch of the next micro-batch."""
        return self.batches // self.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The position is a count of batches: it means the same batches only over the same data.
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(f"the checkpoint's data has {state['steps_per_epoch']} micro-batches per epoch, this "
                             f"run's has {self.steps_per_epoch}: the training data (data.root) or its splits changed")
        saved_identity = state.get("data_identity", "")
        if saved_identity and self.data_identity and saved_identity != self.data_identity:
            raise ValueError(f"the checkpoint was trained on other data (shards {saved_identity[:12]}..., "
                             f"data.root now holds {self.data_identity[:12]}...): a resume continues on the same "
                             f"shards; to train on new data, start a new run with model.pretrained=<this checkpoint>")
        own_identity = self.data_identity
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for field in dataclasses.fields(self):
            value = state.get(field.name, defaults[field.name])
            setattr(self, field.name, {k: Score(**v) for k, v in value.items()} if field.name == "scores" else value)
        self.data_identity = own_identity or saved_identity


ZERO, MASTER16, TORCH = "zero", "master16", "torch"


def optimizer_kind(opt: Any) -> str:
    """"zero" (ZeRO 1/2 partitions), "master16" (DeepSpeed's BF16/FP16 optimizer at stage 0: fp32
    master copies beside 16-bit weights) or "torch" (fp32 / torch_autocast at stage 0)."""
    if hasattr(opt, "single_partition_of_fp32_groups"):
        return ZERO
    if fp32_master_tensors(opt) is not None and hasattr(opt, "optimizer"):
        return MASTER16
    if isinstance(opt, torch.optim.Optimizer):
        return TORCH
    raise ConfigError(f"deepspeed: checkpointing the DeepSpeed optimizer wrapper {type(opt).__name__} is not "
                      f"supported; for mixed precision use the bf16 block or the torch_autocast block")


class OptimizerState:
    """The optimizer as plain tensors, loadable with ``weights_only=True``; per rank (ZeRO
    partitions it).

    DeepSpeed's 16-bit optimizers (ZeRO 1/2, or its BF16/FP16 optimizer at stage 0) wrap our
    optimizer around fp32 tensors: we keep that inner state and the fp32 tensors themselves (the
    master weights when the module is bf16/fp16), not DeepSpeed's full state_dict, which pickles
    Python objects.
    """

    def __init__(self, optimizer: Any):
        self.kind = optimizer_kind(optimizer)  # refused now, not at the first checkpoint
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer
        if self.kind in (ZERO, MASTER16):
            return {"kind": self.kind, "base": opt.optimizer.state_dict(),
                    "fp32": [t.detach() for t in fp32_master_tensors(opt) or []],  # saving copies them
                    "loss_scaler": loss_scaler_state(opt)}
        return {"kind": TORCH, "base": opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        opt = self.optimizer
        if state["kind"] != self.kind:
            raise ValueError(f"the checkpoint's optimizer state is '{state['kind']}', this run's is '{self.kind}' "
                             f"(deepspeed.zero_optimization.stage or the precision block changed)")
        if self.kind in (ZERO, MASTER16):
            opt.optimizer.load_state_dict(state["base"])
            for dst, src in zip(fp32_master_tensors(opt) or [], state["fp32"], strict=True):
                dst.data.copy_(src)
            load_loss_scaler_state(opt, state.get("loss_scaler", {}))
        else:
            opt.load_state_dict(state["base"])


class EngineCounters:
    """DeepSpeed's step counters. We do not use DeepSpeed's own checkpoints (they pickle Python
    objects), so these are restored by hand: ``micro_steps`` decides the accumulation boundary."""

    NAMES = ("global_steps", "global_samples", "micro_steps")

    def __init__(self, engine: Any):
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self.engine, name) for name in self.NAMES}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.NAMES:
            setattr(self.engine, name, state[name])


class RngState:
    """torch's generators on this rank (CPU, and the device's when it is CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
