"""The trainer on DeepSpeed: every method (base x auxiliary task, methods.BASES) on one loop.

One ``train_step`` = each micro-batch's losses (methods.compute_losses: the base's pseudo-labels,
CutMix and forward passes, plus the auxiliary reconstruction), backward, optimizer step, and the
EMA update for the bases with a teacher (mean teacher, UniMatch V2). The student lives in a
DeepSpeed engine (ZeRO 0/1/2, precision, accumulation from the config's ``deepspeed`` block); the
teacher is a plain module beside it, identical on every rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import deepspeed
import torch
from torch import nn

from fastforec import losses, methods
from fastforec.atomic import atomic_write_json
from fastforec.checkpoint import (
    Checkpointer,
    NonFiniteWeights,
    Resumable,
    check_same_weight_precision,
    pick_checkpoint,
)
from fastforec.checkpoint_files import checkpoint_name, latest_checkpoint, remove_partial_writes
from fastforec.config import Config
from fastforec.console import ESTIMATE_AFTER_STEPS, Estimate, RunConsole, StepClock, run_header
from fastforec.data.manifest import Manifest
from fastforec.data.memory import InMemoryData
from fastforec.data.shard_reader import ShardError, verify_shards
from fastforec.determinism import configure_determinism, cudnn_autotuner_off
from fastforec.distributed import DistInfo, all_ranks_each, all_ranks_true
from fastforec.ds_config import deepspeed_config
from fastforec.errors import UserError
from fastforec.evaluate import evaluate, resolve_eval_mode
from fastforec.formats import duration
from fastforec.metrics import nan_to_none
from fastforec.models import Segmentor, build_model
from fastforec.models.sync_bn import convert_sync_batchnorm
from fastforec.optim import build_optimizer
from fastforec.precision import (
    AMX_BF16,
    MasterWeights,
    autocast_context,
    cpu_precision_block,
    keep_norm_statistics_fp32,
    precision_mode,
    weight_cast_scope,
)
from fastforec.preemption import Stopped, StopSignals
from fastforec.provenance import cpu as provenance_cpu
from fastforec.runlog import RunLogger, ScalarMeter
from fastforec.teacher import EmaTeacher
from fastforec.train_state import EngineCounters, OptimizerState, RngState, Score, TrainState

log = logging.getLogger(__name__)
EMPTY_LABEL_WARN_EVERY = 100  # after the first, one warning per this many label-less micro-batches


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive non-finite losses, or weights that became non-finite."""


def _with_cpu_precision(cfg: Config, dist: DistInfo, resume_from: Resumable | None) -> Config:
    """``cfg`` with ``train.bf16_on_amx`` written into its deepspeed block (fastforec.precision)."""
    if not (cfg.train.bf16_on_amx and dist.device.type == "cpu"):
        return cfg
    # every rank must build the same engine: the bf16 block only when every rank's CPU has AMX
    has_amx = all_ranks_true(AMX_BF16 in provenance_cpu()["flags"], dist.device)
    started_with = (resume_from.shared["config"].get("deepspeed") or {}) if resume_from is not None else None
    return dataclasses.replace(cfg, deepspeed=cpu_precision_block(
        cfg.deepspeed, bf16_on_amx=True, device=dist.device, has_amx=has_amx, started_with=started_with))


class Trainer:
    def __init__(self, cfg: Config, *, run_dir: Path, dist: DistInfo, data: InMemoryData | None = None,
                 resume: str | None = None, stop: StopSignals | None = None):
        """``data``: batches already on the device (benchmarks); by default the DALI pipelines
        over the shards of ``cfg.data.root`` (DALI is imported only then). ``resume``: "latest",
        a checkpoint path, or None for a fresh run; the checkpoint is chosen and checked before
        anything is built, so a refused resume writes nothing. ``stop``: the process's signal
        handlers (fastforec.preemption); :meth:`fit` then stops at a step boundary on a signal."""
        self.cfg = cfg
        self.stop = stop
        self._stop_agreed = False  # every rank knows a stop was requested (on some rank)
        self._saved_step: int | None = None  # the step of the newest checkpoint written by this process
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.dist = dist
        self.device = dist.device
        method = cfg.method
        base = methods.base_of(method)
        if data is None:
            self.manifest = Manifest.load(cfg.data.root)
            self._verify_shards()
        else:
            self.manifest = data.manifest
        remove_partial_writes(self.ckpt_dir)  # temporaries of a write killed mid-way (kill -9)
        resume_from = (pick_checkpoint(resume, directory=self.ckpt_dir, dist=dist, config=cfg)
                       if resume is not None else None)
        # train.bf16_on_amx resolved here, before the engine exists, into the config the checkpoints save
        resolved = _with_cpu_precision(cfg, dist, resume_from)
        # the run's first line says when the setting, not the recipe's deepspeed block, chose the precision
        self.precision_note = ("" if resolved.deepspeed is cfg.deepspeed else
                               f" (train.bf16_on_amx{', as the run started' if resume_from else ''})")
        cfg = self.cfg = resolved
        if resume_from is not None:
            check_same_weight_precision(resume_from, cfg.deepspeed)
        self.num_classes = self.manifest.num_classes
        self.fg_classes = list(cfg.method.fg_classes if cfg.method.fg_classes is not None
                               else self.manifest.foreground_classes)
        if data is None:
            from fastforec.data import TrainData, ValData, resolve_device

            data_device = resolve_device(cfg.data.device)
            self.train_data = TrainData(self.manifest, cfg.data, rank=dist.rank, world_size=dist.world_size,
                                        seed=cfg.train.seed, with_unlabeled=base.unlabeled, device=data_device,
                                        strong_views=base.strong_views)
            self.val_data = ValData(self.manifest, cfg.data, batch_size=cfg.eval.batch_size, rank=dist.rank,
                                    world_size=dist.world_size, device=data_device)
        else:
            self.train_data, self.val_data = data.train, data.val

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        student = build_model(cfg.model, num_classes=self.num_classes, reconstruction=method.reconstruction,
                              with_pretrained=True, show_pretrained=dist.is_main)
        self.teacher = EmaTeacher(student, ema_decay=method.ema_decay).to(self.device) if base.teacher else None
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        configure_determinism(deterministic=cfg.train.deterministic, cudnn_benchmark=cfg.train.cudnn_benchmark)
        # The teacher's weights keep the student's (default) layout too: the EMA's fused lerp over
        # student/teacher pairs falls back to one kernel per parameter when the layouts differ.
        self.uses_sync_bn = cfg.model.sync_bn and self.device.type == "cuda" and dist.world_size > 1
        if dist.is_main:
            self._notice_settings_without_effect()
        if self.uses_sync_bn:
            # fastforec's SyncBatchNorm2d: torch's makes a host sync per layer and forward
            student = convert_sync_batchnorm(student)
        self.ds_config = deepspeed_config(cfg, self.device, world_size=dist.world_size)
        requested_stage = cfg.deepspeed.get("zero_optimization", {}).get("stage", 0)
        if dist.is_main and self.ds_config.get("zero_optimization", {}).get("stage", 0) != requested_stage:
            log.info("deepspeed.zero_optimization.stage=%d: one rank has nothing to partition, so this run uses "
                     "stage 0 (no ZeRO bookkeeping); ZeRO applies from two ranks up", requested_stage)
        if precision_mode(self.ds_config) in ("bf16", "fp16"):
            # DeepSpeed casts parameters, not buffers: BN must take 16-bit weights next to fp32 statistics.
            keep_norm_statistics_fp32(student)
        # The student's weights keep the default layout even with train.channels_last: DeepSpeed
        # views every parameter as bytes to broadcast it (stride 1 needed) and ZeRO flattens them.
        # A channels-last input is enough: cuDNN and oneDNN then run the convolution channels-last.
        student.to(self.device)

        self.accum = int(self.ds_config["gradient_accumulation_steps"])
        self.steps_per_epoch = self.train_data.steps_per_epoch  # micro-batches per epoch
        total_batches = (cfg.train.max_steps * self.accum if cfg.train.max_steps is not None
                         else cfg.train.epochs * self.steps_per_epoch)
        self.total_steps = max(1, total_batches // self.accum)
        self.total_batches = self.total_steps * self.accum
        self.warmup_batches = method.warmup_epochs * self.steps_per_epoch if base.unlabeled else 0
        optimizer, scheduler = build_optimizer(student, cfg.optim, max_steps=self.total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=student, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config)
        if dist.world_size == 1:
            # DeepSpeed all-reduces the gradients of a world of one too: it flattens them into
            # buckets, reduces over one rank and copies them back, every step (measured: 18 large
            # cats and as many copies per UniMatch step on the CPU). Nothing to reduce: skip it.
            self.engine.enable_backward_allreduce = False
        if cfg.train.compile:
            # In place (nn.Module.compile): parameter names and state-dict keys stay as they are.
            self.engine.module.compile()
        self.autocast = autocast_context(self.ds_config, self.device)
        self.input_dtype = next(self.engine.module.parameters()).dtype
        # The EMA reads fp32 weights: the module's own unless DeepSpeed cast them (bf16/fp16 blocks).
        self.master_weights = MasterWeights(self.optimizer) if self.input_dtype != torch.float32 else None
        self.step_models = methods.StepModels(student=self.engine, teacher=self.teacher, method=method,
                                              fg_classes=self.fg_classes, input_dtype=self.input_dtype,
                                              memory_format=self.memory_format,
                                              autocast=self.autocast, device=self.device,
                                              cast_scope=weight_cast_scope(self.ds_config, self.device),
                                              labeled_loss=losses.labeled_loss(cfg.loss))
        self.state = TrainState(steps_per_epoch=self.steps_per_epoch, data_identity=self.manifest.identity)
        # Whether the weights after the last optimizer step are finite: a device tensor, read
        # together with the next loss check so that it costs no extra host sync.
        self._weights_finite = torch.tensor(True, device=self.device)
        self.logger = RunLogger(run_dir, enabled=dist.is_main, monitor=getattr(self.engine, "monitor", None),
                                tensorboard=cfg.train.tensorboard, class_names=self.manifest.class_names)
        self.meter = ScalarMeter()
        self.console = RunConsole(enabled=dist.is_main)
        self.sec_per_eval: float | None = None  # measured by the first evaluation (for the estimates)
        self.checkpointer = Checkpointer(
            self.ckpt_dir, dist=dist, config=cfg, keep=cfg.train.keep_checkpoints,
            dataset={"kind": self.manifest.dataset, "num_classes": self.num_classes,
                     "class_names": list(self.manifest.class_names),
                     "palette": [list(c) for c in self.manifest.palette]},
            shared={"state": self.state, "student": self.student,
                    "teacher": self.teacher.module if self.teacher is not None else None,
                    "scheduler": self.scheduler},
            per_rank={"optimizer": OptimizerState(self.optimizer), "engine": EngineCounters(self.engine),
                      "rng": RngState(self.device)})
        if resume_from is not None:
            self._restore(resume_from)

    # ------------------------------------------------------------------------------------------
    # the step

    @property
    def student(self) -> Segmentor:
        return self.engine.module

    def compute_losses(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None,
                       *, epoch: int) -> dict[str, torch.Tensor]:
        """All loss terms (fp32 scalars) and the pseudo-label statistics for one micro-batch
        (fastforec.methods: per base method); supervised only during the warm-up."""
        m = self.cfg.method
        use_u = unlabeled is not None and methods.base_of(m).unlabeled and epoch >= m.warmup_epochs
        return methods.compute_losses(self.step_models, labeled, unlabeled if use_u else None)

    def train_step(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                   ) -> dict[str, torch.Tensor] | None:
        """One micro-batch; returns its loss terms, or None when it was skipped (non-finite loss)."""
        # The forward pass updates the BatchNorm running statistics; a skipped batch must not leave
        # its (possibly NaN) statistics behind, so they are kept to be put back.
        buffers = list(self.student.buffers())
        kept = _copy_all(buffers)
        terms = self.compute_losses(labeled, unlabeled, epoch=self.state.epoch)
        self.state.batches += 1
        loss = terms["loss"]
        # Every rank must take the same branch, or the collectives of backward/step deadlock. This
        # is the step's one host synchronisation of ours: the flags are combined across ranks on
        # the device and read once (the loss terms stay on the device until the next log line).
        # an all-ignore label map gives every supervised loss 0 (never NaN): training goes on, but
        # the user hears of it (labels that are all 255 are a data problem, not a training one)
        labeled_pixels = (labeled["label"] != losses.IGNORE_INDEX).any().to(self.device)
        # a stop signal rides on the same all-reduce: whichever rank got it, all stop after this step
        no_stop = self.stop is None or not self.stop.requested
        loss_ok, weights_ok, has_labels, go_on = all_ranks_each(
            [torch.isfinite(loss), self._weights_finite, labeled_pixels, no_stop], self.device)
        self._stop_agreed = self._stop_agreed or not go_on
        if not has_labels:
            self._on_empty_labels()
        if not weights_ok:
            # Skipping batches cannot repair diverged weights: stop now, save nothing.
            raise self._diverged()
        if not loss_ok:
            if buffers:
                torch._foreach_copy_(buffers, kept)
            self._on_nonfinite()
            return None
        self.state.nonfinite_consecutive = 0
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        # fp16 loss scaling skips the optimizer step on overflow: then nothing else moves either
        if boundary and self.engine.was_step_applied():
            # A huge step makes the weights inf/NaN before the loss is; checked with the next loss.
            self._weights_finite = _all_finite(self.student.parameters())
            self._average_bn_statistics()
            if self.teacher is not None:
                self.teacher.update(self.student, self._ema_step(), fp32_param=self._fp32_getter())
            self.state.step += 1
        self.meter.add(terms)
        return terms

    def _ema_step(self) -> int:
        """The step of the EMA ramp: counted from the teacher's reset when the warm-up ends in one."""
        if self.cfg.method.resets_teacher and self.state.batches > self.warmup_batches:
            return self.state.step - self.warmup_batches // self.accum
        return self.state.step

    def _end_warmup(self) -> None:
        # The teacher restarts as a copy of the student (U2PL): see MethodConfig.warmup_reset_teacher.
        if self.teacher is not None and self.cfg.method.resets_teacher:
            self.teacher.reset_from(self.student)
            log.info("warm-up done at step %d: teacher reset from the student", self.state.step)

    def _average_bn_statistics(self) -> None:
        # Without SyncBatchNorm every rank's running statistics drift apart (each sees its own
        # micro-batches), and so would the teachers, which average them. One small all-reduce of
        # the float buffers keeps student and teacher identical on every rank.
        if self.dist.world_size == 1 or self.uses_sync_bn:
            return
        # BatchNorm statistics only: a model without BatchNorm (DPT on a ViT) makes no collective
        bufs = [b for m in self.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for b in m.buffers(recurse=False) if b.is_floating_point()]
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs])
            torch.distributed.all_reduce(flat)
            flat /= self.dist.world_size
            torch._foreach_copy_(bufs, [f.view_as(b) for f, b in zip(flat.split([b.numel() for b in bufs]), bufs)])

    def _fp32_getter(self) -> Callable[[nn.Parameter], torch.Tensor] | None:
        # Module weights are fp32 unless DeepSpeed casts them (bf16/fp16 blocks); then the master
        # copies are gathered in bulk (one collective per parameter group, on every rank).
        if self.master_weights is None:
            return None
        master = self.master_weights.gather()
        # a frozen parameter (DPT's unused refinenet4.resConfUnit1) has no master copy: it never
        # changes, so the module's own (16-bit) weight is its value
        return lambda p: master[p] if p in master else p.detach()

    def _notice_settings_without_effect(self) -> None:
        """One notice per setting that cannot do here what it says (the run goes on)."""
        cfg, cores = self.cfg, os.cpu_count() or 1
        if cfg.model.sync_bn and self.device.type != "cuda":
            log.warning("model.sync_bn=true has no effect on %s: SyncBatchNorm exists only on CUDA, so BatchNorm "
                        "statistics are per rank (averaged after each step); set it to false to say so",
                        self.device.type)
        if cfg.data.num_threads > cores:
            log.warning("data.num_threads=%d exceeds the %d CPU cores of this machine: the extra threads only "
                        "compete; set data.num_threads=%d", cfg.data.num_threads, cores, cores)

    def _on_empty_labels(self) -> None:
        self.state.empty_label_batches += 1
        n = self.state.empty_label_batches
        if self.dist.is_main and (n == 1 or n % EMPTY_LABEL_WARN_EVERY == 0):
            log.warning("labeled micro-batch %d (step %d) has no valid pixel on some rank: every label is ignore "
                        "(255), so it teaches the supervised loss nothing (%d such batches so far, counted in "
                        "results.json as empty_label_batches); check the labels of data.root '%s' "
                        "(`dataprep verify`)", self.state.batches, self.state.step, n, self.cfg.data.root)

    def _on_nonfinite(self) -> None:
        self.state.nonfinite_total += 1
        self.state.nonfinite_consecutive += 1
        if self.state.nonfinite_consecutive >= self.cfg.train.max_nonfinite:
            # The weights are finite (checked with this loss), so this state is a good one to keep;
            # save_checkpoint verifies every saved tensor once more.
            path = self.save_checkpoint()
            raise NonFiniteLossError(
                f"{self.state.nonfinite_consecutive} consecutive non-finite losses at step {self.state.step}; "
                f"the weights are still finite and are saved in '{path}', positioned after the skipped batches "
                f"(--resume continues from there). If it happens again, check the data (`dataprep verify`) or "
                f"start a new run with a lower optim.lr.")

    def _diverged(self, which: list[str] | None = None) -> NonFiniteLossError:
        latest = latest_checkpoint(self.ckpt_dir)
        where = (f"The newest checkpoint, '{latest}', holds the last finite state (evaluate or predict with it); "
                 f"to train on, start a new run with a lower optim.lr" if latest is not None else
                 "No checkpoint was written before; start again with a lower optim.lr")
        what = f" ({', '.join(which[:3])}{', ...' if len(which) > 3 else ''})" if which else ""
        return NonFiniteLossError(f"the weights became non-finite (inf/NaN, or too large for float32){what} by step "
                                  f"{self.state.step} with "
                                  f"optim.lr={self.cfg.optim.lr}; nothing was saved from that state. {where}")

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg.train
        if self.stop is not None:
            self.stop.defer()  # from here on a signal stops the loop at the next step boundary
        last_log = time.perf_counter()
        wait = 0.0
        batches_at_log, steps_at_log = self.state.batches, self.state.step
        first_step = self.state.step + 1  # of this process: a resumed run starts mid-way
        clock = StepClock(first_step)
        estimated = False
        self.console.print(run_header(
            name=self.cfg.train.name, method=self.cfg.method.label, backbone=self.cfg.model.backbone,
            precision=precision_mode(self.ds_config) + self.precision_note, device=self.device,
            ranks=self.dist.world_size,
            zero_stage=self.ds_config.get("zero_optimization", {}).get("stage", 0), steps=self.total_steps,
            cpu=provenance_cpu() if self.device.type == "cpu" else None))
        done_before = self._finished_earlier()
        if done_before is not None:
            self.console.print(f"run {self.cfg.train.name} finished at step {self.state.step} before; its results "
                               f"('{self.run_dir / 'results.json'}') stand: nothing to train or evaluate")
            return done_before
        with self.console.training(total=self.total_steps, completed=self.state.step) as bar:
            while self.state.batches < self.total_batches:
                epoch = self.state.epoch
                t0 = time.perf_counter()
                labeled, unlabeled = self.train_data.next_batch()
                wait += time.perf_counter() - t0
                if self.train_step(labeled, unlabeled) is None:
                    continue
                at_boundary = self.state.batches % self.accum == 0
                epoch_done = self.state.batches % self.steps_per_epoch == 0
                finished = self.state.batches >= self.total_batches
                if at_boundary:
                    clock.tick(self.state.step)
                    estimate = self._estimate(clock)
                    if not estimated and estimate is not None and \
                            self.state.step >= first_step + ESTIMATE_AFTER_STEPS:
                        self._print_estimate(estimate)
                        estimated = True
                    # the first step, every log_every, and the last: a short run logs too
                    if self.state.step % cfg.log_every == 0 or self.state.step == first_step or finished:
                        now = time.perf_counter()
                        elapsed = max(now - last_log, 1e-9)
                        n = (self.state.batches - batches_at_log) * self.cfg.data.batch_size * self.dist.world_size
                        self._log_train(epoch, samples_per_s=n / elapsed, data_wait=wait / elapsed,
                                        sec_per_step=elapsed / max(1, self.state.step - steps_at_log),
                                        estimate=estimate)
                        last_log, wait = now, 0.0
                        batches_at_log, steps_at_log = self.state.batches, self.state.step
                    bar.update(self.state.step, f"epoch {epoch}" + (
                        f", eta {duration(estimate.total_seconds)}" if estimate is not None else ""))
                if self.warmup_batches and self.state.batches == self.warmup_batches:
                    self._end_warmup()
                if epoch_done and ((epoch + 1) % self.cfg.eval.every == 0) and not finished:
                    self.run_evaluation(epoch)
                if at_boundary and self.state.step % cfg.checkpoint_every == 0 and not finished:
                    self.save_checkpoint()
                if at_boundary and self._stop_agreed and not finished:
                    self._stop_now()
        epoch = (self.state.batches - 1) // self.steps_per_epoch
        self.run_evaluation(epoch)
        self.save_checkpoint()
        return self.write_results()

    def _finished_earlier(self) -> dict[str, Any] | None:
        """results.json, when this run resumed from its last step and wrote it then: a finished job
        requeued (``--resume auto``) or resumed again ends here instead of evaluating once more and
        logging that evaluation twice. Without it (killed between the last checkpoint and the
        results) the final evaluation runs as usual; every rank takes the same branch."""
        if self.state.batches < self.total_batches:
            return None
        path, results = self.run_dir / "results.json", None
        try:
            results = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):  # unreadable, not JSON, not UTF-8
            results = None
        ok = isinstance(results, dict) and results.get("step") == self.state.step
        return results if all_ranks_true(ok, self.device) else None

    def _log_train(self, epoch: int, *, samples_per_s: float, data_wait: float, sec_per_step: float,
                   estimate: Estimate | None) -> None:
        record = {"step": self.state.step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                  **self.meter.pop(), "samples_per_s": samples_per_s, "sec_per_step": sec_per_step,
                  "data_wait_frac": min(1.0, data_wait), "nonfinite_skipped": self.state.nonfinite_total}
        self.logger.log(record, step=self.state.step, prefix="train")
        self.console.print(self.console.train_line(step=self.state.step, total=self.total_steps, epoch=epoch,
                                                   record=record, device=self.device, estimate=estimate,
                                                   next_eval_s=self._next_eval_seconds(estimate)))

    def _evals_left(self) -> int:
        """Evaluations still to come: at each remaining epoch end that eval.every selects, and the final one."""
        epochs = -(-self.total_batches // self.steps_per_epoch)
        done = self.state.batches // self.steps_per_epoch
        return sum(1 for e in range(done, epochs - 1) if (e + 1) % self.cfg.eval.every == 0) + 1

    def _estimate(self, clock: StepClock) -> Estimate | None:
        sec = clock.sec_per_step(self.state.step)
        if sec is None:
            return None
        return Estimate(sec_per_step=sec, steps_left=self.total_steps - self.state.step,
                        evals_left=self._evals_left() * len(methods.eval_models(self.cfg)),
                        sec_per_eval=self.sec_per_eval)

    def _next_eval_seconds(self, estimate: Estimate | None) -> float | None:
        if estimate is None:
            return None
        epoch_end = -(-max(1, self.state.batches) // self.steps_per_epoch) * self.steps_per_epoch
        while (epoch_end // self.steps_per_epoch) % self.cfg.eval.every and epoch_end < self.total_batches:
            epoch_end += self.steps_per_epoch
        return estimate.sec_per_step * (min(epoch_end, self.total_batches) - self.state.batches) / self.accum

    def _print_estimate(self, estimate: Estimate) -> None:
        self.console.print(f"estimate: {estimate.describe()}")
        warning = estimate.warning(self.device)
        if warning:
            self.console.print(warning)

    def eval_model(self, name: str) -> nn.Module:
        return self.teacher.module if name == "teacher" else self.student

    def run_evaluation(self, epoch: int) -> dict[str, dict[str, Any]]:
        """Score every model of ``eval.model``; one metrics record, the headline model's keys
        unprefixed and, when both are scored, each model's under ``<name>_``."""
        crop = self.cfg.data.crop_size
        mode = resolve_eval_mode(self.cfg.eval.mode, self.manifest.dataset)
        names = methods.eval_models(self.cfg)
        results = {}
        images = len(self.val_data) * self.cfg.eval.batch_size * self.dist.world_size
        for name in names:
            tuner = cudnn_autotuner_off() if mode == "whole" else contextlib.nullcontext()
            with self.console.evaluation(name=name, images=images) as bar, tuner:
                result = evaluate(self.eval_model(name), self.val_data, num_classes=self.num_classes,
                                  protocol=self.cfg.eval.sliding_protocol, size_multiple=self.cfg.eval.size_multiple,
                                  ignore_index=self.manifest.ignore_index,
                                  mode=mode, window=crop, stride=self.cfg.eval.stride(crop), device=self.device,
                                  autocast=self.autocast, on_batch=bar.advance)
            self.sec_per_eval = bar.seconds
            self.console.print(f"eval {name} (epoch {epoch}): mIoU {100 * result['miou']:.2f} "
                               f"({bar.images} images in {duration(bar.seconds)})")
            self.state.scores.setdefault(name, Score()).update(result["miou"], epoch)
            results[name] = {**result, "epoch": epoch}
        self.last_eval = results
        record: dict[str, Any] = {"step": self.state.step, "epoch": epoch, "model": names[0]}
        for i, name in enumerate(names):
            r = results[name]
            fields = {"miou": r["miou"], "pixel_acc": r["pixel_acc"], "iou": [nan_to_none(v) for v in r["iou"]]}
            if i == 0:
                record.update(fields)
            if len(names) > 1:
                record.update({f"{name}_{k}": v for k, v in fields.items()})
        self.logger.log(record, step=self.state.step, prefix="eval")
        return results

    def write_results(self) -> dict[str, Any]:
        """results.json: the headline model's numbers at the top level (``scored`` says which) and
        every evaluated model's under ``models``."""
        models = {}
        for name, last in self.last_eval.items():
            score = self.state.scores[name]
            models[name] = {"miou_last": last["miou"], "miou_best": score.best_miou, "best_epoch": score.best_epoch,
                            "per_class_iou": {n: nan_to_none(v) for n, v in zip(self.manifest.class_names,
                                                                                last["iou"])}}
        scored = methods.eval_models(self.cfg)[0]
        results = {**models[scored], "scored": scored, "models": models,
                   "last_epoch": self.last_eval[scored]["epoch"], "step": self.state.step,
                   "class_names": list(self.manifest.class_names), "method": self.cfg.method.label,
                   "precision": precision_mode(self.ds_config),
                   "nonfinite_skipped": self.state.nonfinite_total,
                   "empty_label_batches": self.state.empty_label_batches}
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "results.json", results)
        return results

    # ------------------------------------------------------------------------------------------
    # checkpoints (fastforec.checkpoint saves and restores the parts named in __init__)

    def save_checkpoint(self) -> Path:
        try:
            path = self.checkpointer.save(self.state.step)
        except NonFiniteWeights as e:
            raise self._diverged(e.names) from None
        self._saved_step = self.state.step
        return path

    def _stop_now(self) -> None:
        """A stop signal, at a step boundary: save this step (unless its periodic checkpoint was
        just written) at the same point of the loop as a periodic checkpoint, so that --resume
        continues exactly as the uninterrupted run would, then end the process's run."""
        path = (self.ckpt_dir / checkpoint_name(self.state.step) if self._saved_step == self.state.step
                else self.save_checkpoint())
        if self.dist.is_main:
            self.console.print(f"stop requested: checkpoint of step {self.state.step} written to '{path}'")
        raise Stopped(self.stop.signum if self.stop is not None else None, step=self.state.step, checkpoint=path)

    def _restore(self, resumable: Resumable) -> None:
        self.checkpointer.restore(resumable)
        # The position is the train state's; the loader only learns where to start.
        self.train_data.seek(self.state.batches)
        log.info("resumed from %s at step %d", resumable.path, self.state.step)
        if self.dist.is_main:
            dropped = self.logger.drop_after(self.state.step)
            if dropped:
                log.info("metrics.jsonl: dropped %d record(s) after step %d (the interrupted run's, redone now)",
                         dropped, self.state.step)

    def _verify_shards(self) -> None:
        """Shards against the manifest (data.verify_shards), once per node (ranks of a node share
        its files), before any other work; every rank stops if one node finds damage."""
        splits = ["labeled", "val"] + (["unlabeled"] if methods.base_of(self.cfg.method).unlabeled else [])
        problem = None
        if self.dist.local_rank == 0:
            try:
                verify_shards(self.manifest, splits, sha256=self.cfg.data.verify_shards == "sha256")
            except ShardError as e:
                problem = e
        if not all_ranks_true(problem is None, self.device):
            raise problem or ShardError(f"the shards in '{self.manifest.root}' are damaged on another node "
                                        f"(its message names them)")


def _all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor, computed without a host sync: every floating-point element is finite.

    One fused L2 norm per dtype over all tensors: NaN and inf propagate through the sum of
    squares. A norm beyond the float range counts as non-finite too; such weights have diverged.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    flags = [torch.stack(torch._foreach_norm(g)).isfinite().all() for g in groups.values()]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def _copy_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` in one fused kernel per dtype (a loop of clones would launch one each)."""
    if not tensors:
        return []
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(tensors)
    for idx in by_dtype.values():
        for i, c in zip(idx, torch._foreach_mul([tensors[i].detach() for i in idx], 1)):
            out[i] = c
    return out
