"""The mean-teacher + reconstruction trainer on DeepSpeed (DESIGN.md section 2).

One ``train_step`` = teacher forward on the weak view, CutMix, student forward on
[labeled ; strong], losses, backward, optimizer step, EMA update. The student lives in a DeepSpeed
engine (ZeRO 0/1/2, precision, accumulation from the config's ``deepspeed`` block); the teacher is
a plain module beside it, identical on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import deepspeed
import torch
from torch import nn

from fastforec import losses
from fastforec.atomic import atomic_write_json
from fastforec.checkpoint import (CheckpointError, checkpoint_name, latest_checkpoint, load_checkpoint,
                                  prune_checkpoints, rank_file, save_checkpoint)
from fastforec.config import Config
from fastforec.data import TrainData, ValData, resolve_device
from fastforec.data.manifest import Manifest
from fastforec.distributed import DistInfo, all_ranks_true, barrier
from fastforec.evaluate import evaluate
from fastforec.metrics import nan_to_none
from fastforec.models import DeepLabV3Plus, deeplabv3plus
from fastforec.optim import build_optimizer
from fastforec.runlog import RunLogger, ScalarMeter
from fastforec.teacher import EmaTeacher

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "fastforec-checkpoint-v1"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses."""


@dataclass
class TrainState:
    """Counters saved with every checkpoint (the trainer's position)."""

    step: int = 0  # optimizer steps done
    batches: int = 0  # micro-batches consumed: the data position
    best_miou: float = -1.0
    best_epoch: int = -1
    miou_last: float = float("nan")
    nonfinite_total: int = 0
    nonfinite_consecutive: int = 0


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The user's ``deepspeed`` block with what the trainer owns filled in."""
    ds = json.loads(json.dumps(cfg.deepspeed))
    ds.setdefault("train_micro_batch_size_per_gpu", cfg.data.batch_size)
    if ds["train_micro_batch_size_per_gpu"] != cfg.data.batch_size:
        raise ValueError("deepspeed.train_micro_batch_size_per_gpu must equal data.batch_size "
                         f"({ds['train_micro_batch_size_per_gpu']} != {cfg.data.batch_size}); remove it from the "
                         "deepspeed block, it is filled in from data.batch_size")
    ds.setdefault("gradient_accumulation_steps", 1)
    ds.pop("train_batch_size", None)  # derived: micro x accumulation x world size
    # Our SGD is not on DeepSpeed's tested list for ZeRO; it is a plain elementwise optimizer.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10 ** 9)  # we log ourselves
    return ds


def autocast_context(ds: dict[str, Any], device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast the engine applies, for code outside it (teacher, evaluation); a no-op in fp32."""
    dtype = None
    if ds.get("torch_autocast", {}).get("enabled"):
        dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16}[str(ds["torch_autocast"].get("dtype", "bfloat16"))]
    elif ds.get("bf16", {}).get("enabled"):
        dtype = torch.bfloat16
    elif ds.get("fp16", {}).get("enabled"):
        dtype = torch.float16
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    def __init__(self, cfg: Config, *, run_dir: Path, dist: DistInfo):
        self.cfg = cfg
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.dist = dist
        self.device = dist.device
        self.manifest = Manifest.load(cfg.data.root)
        self.num_classes = self.manifest.num_classes
        self.fg_classes = list(cfg.method.fg_classes if cfg.method.fg_classes is not None
                               else self.manifest.foreground_classes)
        method = cfg.method
        data_device = resolve_device(cfg.data.device)
        self.train_data = TrainData(self.manifest, cfg.data, rank=dist.rank, world_size=dist.world_size,
                                    seed=cfg.train.seed, with_unlabeled=method.uses_unlabeled, device=data_device)
        self.val_data = ValData(self.manifest, cfg.data, rank=dist.rank, world_size=dist.world_size,
                                device=data_device)

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        student = deeplabv3plus(backbone=cfg.model.backbone, num_classes=self.num_classes,
                                output_stride=cfg.model.output_stride, reconstruction=method.reconstruction,
                                pretrained=cfg.model.pretrained, decoder_channels=cfg.model.decoder_channels,
                                show_pretrained=dist.is_main)
        self.teacher = EmaTeacher(student, ema_decay=method.ema_decay).to(self.device) if method.uses_unlabeled else None
        self.uses_sync_bn = cfg.model.sync_bn and self.device.type == "cuda" and dist.world_size > 1
        if self.uses_sync_bn:
            # SyncBatchNorm refuses CPU tensors, so it exists only on CUDA.
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        student.to(self.device)

        self.ds_config = deepspeed_config(cfg)
        self.accum = int(self.ds_config["gradient_accumulation_steps"])
        self.steps_per_epoch = self.train_data.steps_per_epoch  # micro-batches per epoch
        total_batches = (cfg.train.max_steps * self.accum if cfg.train.max_steps is not None
                         else cfg.train.epochs * self.steps_per_epoch)
        self.total_steps = max(1, total_batches // self.accum)
        self.total_batches = self.total_steps * self.accum
        optimizer, scheduler = build_optimizer(student, cfg.optim, max_steps=self.total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=student, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config)
        _optimizer_kind(self.optimizer)  # fail now, not at the first checkpoint
        self.autocast = autocast_context(self.ds_config, self.device)
        self.input_dtype = next(self.engine.module.parameters()).dtype
        self.state = TrainState()
        self.logger = RunLogger(run_dir, enabled=dist.is_main, monitor=getattr(self.engine, "monitor", None),
                                tensorboard=cfg.train.tensorboard, class_names=self.manifest.class_names)
        self.meter = ScalarMeter()

    # ------------------------------------------------------------------------------------------
    # the step

    @property
    def student(self) -> DeepLabV3Plus:
        return self.engine.module

    def epoch_of(self, batches: int) -> int:
        return batches // self.steps_per_epoch

    def compute_losses(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None,
                       *, epoch: int) -> dict[str, torch.Tensor]:
        """All loss terms (fp32 scalars) and the pseudo-label statistics for one micro-batch."""
        m = self.cfg.method
        x_l = labeled["image"].to(self.device, non_blocking=True)
        y_l = labeled["label"].to(self.device, non_blocking=True)
        use_u = unlabeled is not None and m.uses_unlabeled and epoch >= m.warmup_epochs
        out: dict[str, torch.Tensor] = {}
        if not use_u:
            pred = self.engine(x_l.to(self.input_dtype))
            out["loss_s"] = losses.supervised_ce(pred["seg"], y_l)
            if m.reconstruction is not None:
                out["loss_rec"] = self._aux_loss(pred, x_l, *losses.rec_targets_labeled(
                    y_l, method=m.name, fg_classes=self.fg_classes), weight=m.rec_weight_labeled)
            out["loss"] = sum(out.values())
            return out

        weak = unlabeled["weak"].to(self.device, non_blocking=True)
        strong = unlabeled["strong"].to(self.device, non_blocking=True)
        valid = unlabeled["valid"].to(self.device, non_blocking=True)
        box = unlabeled["box"].to(self.device, non_blocking=True)
        with self.autocast():
            t_logits = self.teacher(weak)["seg"]
        pl, conf, pl_fg = losses.pseudo_label(t_logits, self.fg_classes, backend=m.kernels)
        # CutMix partner: the next sample of the batch (a fixed permutation keeps resume exact).
        perm = torch.roll(torch.arange(strong.shape[0], device=self.device), 1)
        strong, pl, conf, pl_fg, valid = losses.cutmix_batch(box, perm, strong, pl, conf, pl_fg, valid)

        b = x_l.shape[0]
        pred = self.engine(torch.cat([x_l, strong]).to(self.input_dtype))
        seg_l, seg_u = pred["seg"].split([b, strong.shape[0]])
        out["loss_s"] = losses.supervised_ce(seg_l, y_l)
        out["loss_u"] = m.lambda_u * losses.pseudo_label_ce(seg_u, pl, conf, valid, m.conf_thresh, backend=m.kernels)
        if m.reconstruction is not None:
            lab = {k: v[:b] for k, v in pred.items() if k != "seg"}
            unl = {k: v[b:] for k, v in pred.items() if k != "seg"}
            fg_l, mask_l = losses.rec_targets_labeled(y_l, method=m.name, fg_classes=self.fg_classes)
            fg_u, mask_u = losses.rec_targets_unlabeled(pl_fg, conf, valid, method=m.name, rec_thresh=m.rec_thresh)
            out["loss_rec"] = (self._aux_loss(lab, x_l, fg_l, mask_l, weight=m.rec_weight_labeled)
                               + self._aux_loss(unl, strong, fg_u, mask_u, weight=m.rec_weight_unlabeled))
        out["loss"] = sum(out.values())
        n_valid = valid.sum().clamp_min(1)
        out["pl_coverage"] = ((conf > m.conf_thresh) & valid).sum() / n_valid
        out["teacher_conf"] = (conf * valid).sum() / n_valid
        return out

    def _aux_loss(self, pred: dict[str, torch.Tensor], image: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor,
                  *, weight: float) -> torch.Tensor:
        if "rec" in pred:
            return weight * losses.masked_mse(pred["rec"], image, fg, mask, backend=self.cfg.method.kernels)
        return weight * losses.fgbg_loss(pred["fgbg"], fg, mask)

    def train_step(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                   ) -> dict[str, torch.Tensor] | None:
        """One micro-batch; returns its loss terms, or None when it was skipped (non-finite loss)."""
        terms = self.compute_losses(labeled, unlabeled, epoch=self.epoch_of(self.state.batches))
        self.state.batches += 1
        loss = terms["loss"]
        # Every rank must take the same branch, or the collectives of backward/step deadlock.
        if not all_ranks_true(bool(torch.isfinite(loss)), self.device):
            self._on_nonfinite()
            return None
        self.state.nonfinite_consecutive = 0
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        # fp16 loss scaling skips the optimizer step on overflow: then nothing else moves either
        if boundary and self.engine.was_step_applied():
            self._average_bn_statistics()
            if self.teacher is not None:
                self.teacher.update(self.student, self.state.step, fp32_param=self._fp32_getter())
            self.state.step += 1
        self.meter.add(terms)
        return terms

    def _average_bn_statistics(self) -> None:
        # Without SyncBatchNorm every rank's running statistics drift apart (each sees its own
        # micro-batches), and so would the teachers, which average them. One small all-reduce of
        # the float buffers keeps student and teacher identical on every rank.
        if self.dist.world_size == 1 or self.uses_sync_bn:
            return
        bufs = [b for b in self.student.buffers() if b.is_floating_point()]
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs])
            torch.distributed.all_reduce(flat)
            flat /= self.dist.world_size
            torch._foreach_copy_(bufs, [f.view_as(b) for f, b in zip(flat.split([b.numel() for b in bufs]), bufs)])

    def _fp32_getter(self) -> Callable[[nn.Parameter], torch.Tensor] | None:
        # Module weights are fp32 unless DeepSpeed casts them (bf16/fp16 blocks); only then do we
        # need the master copy, and fetching it is a collective per parameter.
        if self.input_dtype == torch.float32:
            return None
        from deepspeed.utils import safe_get_full_fp32_param

        def get(p: nn.Parameter) -> torch.Tensor:
            full = safe_get_full_fp32_param(p)
            return p.detach().float() if full is None else full
        return get

    def _on_nonfinite(self) -> None:
        self.state.nonfinite_total += 1
        self.state.nonfinite_consecutive += 1
        if self.state.nonfinite_consecutive >= self.cfg.train.max_nonfinite:
            path = self.save_checkpoint()
            raise NonFiniteLossError(
                f"{self.state.nonfinite_consecutive} consecutive non-finite losses at step {self.state.step}; "
                f"the last good state is saved in {path}. Lower optim.lr or check the data.")

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg.train
        last_log = time.perf_counter()
        wait = 0.0
        batches_at_log = self.state.batches
        with self.logger.progress(total=self.total_steps, completed=self.state.step) as bar:
            while self.state.batches < self.total_batches:
                epoch = self.epoch_of(self.state.batches)
                t0 = time.perf_counter()
                labeled, unlabeled = self.train_data.next_batch(epoch)
                wait += time.perf_counter() - t0
                if self.train_step(labeled, unlabeled) is None:
                    continue
                at_boundary = self.state.batches % self.accum == 0
                if at_boundary and self.state.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    n = (self.state.batches - batches_at_log) * self.cfg.data.batch_size * self.dist.world_size
                    rate = n / max(now - last_log, 1e-9)
                    self._log_train(epoch, samples_per_s=rate, data_wait=wait / max(now - last_log, 1e-9))
                    bar.update(completed=self.state.step, epoch=epoch, samples_per_s=rate)
                    last_log, wait, batches_at_log = now, 0.0, self.state.batches
                else:
                    bar.update(completed=self.state.step, epoch=epoch)
                epoch_done = self.state.batches % self.steps_per_epoch == 0
                finished = self.state.batches >= self.total_batches
                if epoch_done and ((epoch + 1) % cfg.eval_every == 0) and not finished:
                    self.run_evaluation(epoch)
                if at_boundary and self.state.step % cfg.checkpoint_every == 0 and not finished:
                    self.save_checkpoint()
        epoch = self.epoch_of(self.state.batches - 1)
        self.run_evaluation(epoch)
        self.save_checkpoint()
        return self.write_results()

    def _log_train(self, epoch: int, *, samples_per_s: float, data_wait: float) -> None:
        record = {"step": self.state.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                  **self.meter.pop(), "samples_per_s": samples_per_s, "data_wait_frac": min(1.0, data_wait),
                  "nonfinite_skipped": self.state.nonfinite_total}
        self.logger.log(record, step=self.state.step, prefix="train")

    def eval_model(self) -> nn.Module:
        return self.student

    def run_evaluation(self, epoch: int) -> dict[str, Any]:
        crop = self.cfg.data.crop_size
        mode = self.cfg.data.eval_mode
        if mode == "auto":
            mode = "sliding" if self.manifest.dataset == "cityscapes" else "whole"
        result = evaluate(self.eval_model(), self.val_data, num_classes=self.num_classes,
                          ignore_index=self.manifest.ignore_index, mode=mode, window=crop,
                          stride=max(1, int(crop * self.cfg.data.eval_stride_ratio)), device=self.device,
                          autocast=self.autocast)
        miou = result["miou"]
        self.state.miou_last = miou
        self.last_eval = {**result, "epoch": epoch}
        if miou > self.state.best_miou:
            self.state.best_miou, self.state.best_epoch = miou, epoch
        self.logger.log({"step": self.state.step, "epoch": epoch, "miou": miou, "pixel_acc": result["pixel_acc"],
                         "iou": [nan_to_none(v) for v in result["iou"]]}, step=self.state.step, prefix="eval")
        return result

    def write_results(self) -> dict[str, Any]:
        last = self.last_eval
        results = {"miou_last": last["miou"], "miou_best": self.state.best_miou, "best_epoch": self.state.best_epoch,
                   "last_epoch": last["epoch"], "step": self.state.step,
                   "per_class_iou": {n: nan_to_none(v) for n, v in zip(self.manifest.class_names, last["iou"])},
                   "class_names": list(self.manifest.class_names), "method": self.cfg.method.name,
                   "nonfinite_skipped": self.state.nonfinite_total}
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "results.json", results)
        return results

    # ------------------------------------------------------------------------------------------
    # checkpoints: rank 0 writes the shared file last, after every rank's own file exists, so a
    # shared file on disk means the checkpoint is complete.

    def save_checkpoint(self) -> Path:
        path = self.ckpt_dir / checkpoint_name(self.state.step)
        save_checkpoint(self._rank_state(), rank_file(path, self.dist.rank))
        barrier()
        if self.dist.is_main:
            save_checkpoint(self._shared_state(), path)
            prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
        barrier()
        return path

    def _shared_state(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "world_size": self.dist.world_size,
                "state": dataclasses.asdict(self.state),
                "student": self.student.state_dict(),
                "teacher": self.teacher.module.state_dict() if self.teacher is not None else None,
                "scheduler": self.scheduler.state_dict(),
                "dataset": {"num_classes": self.num_classes, "class_names": list(self.manifest.class_names),
                            "palette": [list(c) for c in self.manifest.palette]}}

    def _rank_state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"optimizer": _optimizer_state(self.optimizer), "data": self.train_data.state_dict(), "rng": rng,
                "engine": {"global_steps": self.engine.global_steps, "global_samples": self.engine.global_samples,
                           "micro_steps": self.engine.micro_steps}}

    def restore(self, path: Path) -> None:
        shared = load_checkpoint(path)
        if shared.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"'{path}' is not a fastforec training checkpoint")
        if shared["world_size"] != self.dist.world_size:
            raise CheckpointError(f"'{path}' was written by {shared['world_size']} ranks; resume with the same "
                                  f"number of processes (now {self.dist.world_size})")
        own = load_checkpoint(rank_file(path, self.dist.rank))
        self.student.load_state_dict(shared["student"])
        if self.teacher is not None:
            self.teacher.module.load_state_dict(shared["teacher"])
        _load_optimizer_state(self.optimizer, own["optimizer"])
        self.scheduler.load_state_dict(shared["scheduler"])
        self.state = TrainState(**shared["state"])
        self.train_data.load_state_dict(own["data"])
        torch.set_rng_state(own["rng"]["torch"])
        if "cuda" in own["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["rng"]["cuda"], self.device)
        for k, v in own["engine"].items():
            setattr(self.engine, k, v)
        log.info("resumed from %s at step %d", path, self.state.step)

    def find_resume(self, resume: str) -> Path:
        """``resume`` is "latest" (this run's newest checkpoint) or a checkpoint path."""
        if resume == "latest":
            latest = latest_checkpoint(self.ckpt_dir)
            if latest is None:
                raise CheckpointError(f"--resume: no checkpoint in '{self.ckpt_dir}'")
            return latest
        return Path(resume)


def _optimizer_kind(opt: Any) -> str:
    """"zero" (ZeRO 1/2 partitions) or "torch" (stage 0 in fp32 / torch_autocast); else an error."""
    if hasattr(opt, "single_partition_of_fp32_groups"):
        return "zero"
    if isinstance(opt, torch.optim.Optimizer):
        return "torch"
    raise CheckpointError(f"checkpointing the DeepSpeed optimizer wrapper {type(opt).__name__} is not supported; "
                          f"use ZeRO stage >= 1 or the torch_autocast block for mixed precision")


def _optimizer_state(opt: Any) -> dict[str, Any]:
    """Optimizer state as plain tensors, loadable with weights_only=True.

    ZeRO 1/2 wrap our SGD around flat fp32 partitions: we keep that inner state and the fp32
    partition itself (the master weights when the module is bf16/fp16), not DeepSpeed's full
    state_dict, which pickles Python objects.
    """
    if _optimizer_kind(opt) == "zero":
        return {"kind": "zero", "base": opt.optimizer.state_dict(),
                "fp32": [t.detach().clone() for t in opt.single_partition_of_fp32_groups]}
    return {"kind": "torch", "base": opt.state_dict()}


def _load_optimizer_state(opt: Any, state: dict[str, Any]) -> None:
    if state["kind"] == "zero":
        opt.optimizer.load_state_dict(state["base"])
        for dst, src in zip(opt.single_partition_of_fp32_groups, state["fp32"]):
            dst.data.copy_(src)
    else:
        opt.load_state_dict(state["base"])
