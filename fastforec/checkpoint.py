"""What a training checkpoint holds, and the one place that saves, resumes and loads it.

A checkpoint of step N is two kinds of file in ``runs/<name>/checkpoints/``:

- ``step_N.pt``, written by rank 0: the parts every rank holds identically (the config, the
  train state with the data position, student, teacher, LR scheduler) and the dataset's class
  table, so that evaluation and prediction need nothing else;
- ``step_N.rankR.pt``, one per rank: what differs between ranks (the optimizer partition under
  ZeRO, DeepSpeed's counters, the RNG).

Every rank writes its own file first; rank 0 writes the shared file after a barrier, so a shared
file on disk means the checkpoint is complete. The file format (atomic writes, checksums, safe
loads) is :mod:`fastforec.checkpoint_files`; the parts are :mod:`fastforec.train_state`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastforec.atomic import WriteError
from fastforec.checkpoint_files import (
    CheckpointError,
    check_same_settings,
    checkpoint_name,
    earlier_checkpoint_hint,
    first_line,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rank_file,
    resolve_checkpoint,
    save_checkpoint,
    shared_file_of,
    without_hint,
)
from fastforec.config import LEGACY_DECODER, Config, config_from_dict, upgrade_legacy_keys
from fastforec.distributed import DistInfo, all_ranks_true, barrier
from fastforec.precision import PARAM_DTYPES, precision_mode
from fastforec.train_state import Stateful

log = logging.getLogger(__name__)

# v2: the data position is the train state's micro-batch count (v1 kept a loader position per rank).
CHECKPOINT_FORMAT = "fastforec-checkpoint-v2"
# Formats whose weights, config and dataset table evaluation and prediction can read.
READABLE_FORMATS = ("fastforec-checkpoint-v1", CHECKPOINT_FORMAT)
# Settings a checkpoint must share with the config that resumes it: the architecture (else the
# weights do not fit), what fixes the data position (else the resumed batches differ), and what the
# optimizer and scheduler state restore from the checkpoint (a new value would be silently ignored).
RESUME_MUST_MATCH = ("model.backbone", "model.backbone_width", "model.output_stride", "model.decoder",
                     "model.decoder_channels",
                     "method.base", "method.aux",
                     "data.batch_size", "data.crop_size", "train.seed", "deepspeed.gradient_accumulation_steps",
                     "optim.lr", "optim.head_lr_mult", "optim.momentum", "optim.weight_decay", "optim.poly_power",
                     "train.epochs", "train.max_steps")
# Shared parts that hold weights: no checkpoint is written while one of them is non-finite.
WEIGHT_PARTS = ("student", "teacher")


class NonFiniteWeights(Exception):
    """The weights to be saved are not all finite (``names``: the first offending tensors)."""

    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


@dataclass
class Resumable:
    """A checkpoint chosen to resume from, read and checked against the run: the shared file's
    contents and this rank's own."""

    path: Path
    shared: dict[str, Any]
    own: dict[str, Any]


@dataclass
class TrainedWeights:
    """What evaluation, prediction and export read from a training checkpoint."""

    path: Path
    config: Config
    dataset: dict[str, Any]  # num_classes, class_names, palette (and kind)
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor] | None


class Checkpointer:
    """Saves and restores the parts of one run. ``shared``: identical on every rank (rank 0
    writes them); ``per_rank``: each rank's own. ``None`` stands for a part this run does not have
    (no teacher) and is saved as such."""

    def __init__(self, directory: Path, *, dist: DistInfo, config: Config, dataset: dict[str, Any], keep: int,
                 shared: dict[str, Stateful | None], per_rank: dict[str, Stateful]):
        self.directory, self.dist, self.config, self.dataset, self.keep = directory, dist, config, dataset, keep
        self.shared, self.per_rank = shared, per_rank

    def save(self, step: int) -> Path:
        """Write the checkpoint of ``step`` on every rank (a collective) and prune old ones;
        raises :class:`NonFiniteWeights`, writing nothing, when a weight is inf/NaN: the newest
        checkpoint must always be one to resume from."""
        path = self.directory / checkpoint_name(step)
        shared = {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "world_size": self.dist.world_size,
                  "dataset": self.dataset, **_state_dicts(self.shared)}
        # Every rank holds the same replicated weights, so all take the same branch.
        named = [(f"{part}.{name}", t) for part in WEIGHT_PARTS if shared.get(part) is not None
                 for name, t in shared[part].items() if t.is_floating_point()]
        # one flag per tensor on the device, read together: one host sync, not one per tensor. The
        # trainer's test after each step is the same: a tensor whose norm overflows float32 has
        # diverged even when each of its elements is still finite.
        finite = torch.stack(torch._foreach_norm([t.detach() for _, t in named])).isfinite().tolist() if named else []
        bad = [name for (name, _), ok in zip(named, finite) if not ok]
        if not all_ranks_true(not bad, self.dist.device):
            raise NonFiniteWeights(bad)
        own = rank_file(path, self.dist.rank)
        save_checkpoint(_state_dicts(self.per_rank), own)
        barrier()
        if self.dist.is_main:
            try:
                save_checkpoint(shared, path)
            except WriteError:
                # without its shared file a checkpoint is never read: drop this rank's part too, so
                # a full disk leaves the directory as the last complete checkpoint left it
                own.unlink(missing_ok=True)
                raise
            prune_checkpoints(self.directory, self.keep)
        barrier()
        return path

    def restore(self, resumable: Resumable) -> None:
        """Load every part from ``resumable``; a part that does not fit this run (shapes,
        optimizer kind, data) is a :class:`CheckpointError` naming the file."""
        try:
            for parts, saved in ((self.shared, resumable.shared), (self.per_rank, resumable.own)):
                for name, part in parts.items():
                    if part is not None:
                        part.load_state_dict(saved[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint '{resumable.path}' does not fit this run ({first_line(e)}); resume "
                                  f"with the config and data it was trained with (the config is saved in the "
                                  f"checkpoint and the run's config.json)") from None


def _state_dicts(parts: dict[str, Stateful | None]) -> dict[str, Any]:
    return {name: None if part is None else part.state_dict() for name, part in parts.items()}


def pick_checkpoint(resume: str, *, directory: Path, dist: DistInfo, config: Config) -> Resumable:
    """The checkpoint to continue from, read and checked: "latest" is the newest complete, intact
    checkpoint in ``directory`` (damaged newer ones are skipped, and said so), a path is taken as
    it is (no fallback). It must fit this run (format, ranks, settings). A collective."""
    if resume == "latest":
        candidates = list_checkpoints(directory)[::-1]
        if not candidates:
            raise CheckpointError(f"--resume: no checkpoint in '{directory}'")
    else:
        candidates = [Path(resume)]
    skipped: list[str] = []
    for path in candidates:
        try:  # every rank checks its own file; all must have an intact one
            shared, own, problem = load_checkpoint(path), load_checkpoint(rank_file(path, dist.rank)), None
        except CheckpointError as e:
            shared, own, problem = None, None, e
        if all_ranks_true(problem is None, dist.device):
            break
        if resume != "latest":
            raise problem or CheckpointError(f"checkpoint '{path}': the file of another rank is damaged "
                                             f"(see its message); {earlier_checkpoint_hint(path)}")
        skipped.append(str(problem) if problem else f"'{path}': the file of another rank is damaged")
    else:
        raise CheckpointError(f"--resume: every checkpoint in '{directory}' is damaged, so there is nothing to "
                              f"resume from; start a new run (another --run-dir, or remove the directory):\n  "
                              + "\n  ".join(without_hint(s) for s in skipped))
    if skipped and dist.is_main:
        log.warning("--resume: skipped %d damaged checkpoint(s), resuming from '%s' instead:\n  %s",
                    len(skipped), path, "\n  ".join(skipped))
    if shared.get("format") in READABLE_FORMATS and shared["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' was written by an older fastforec ({shared['format']}); it can be "
                              f"evaluated, predicted with and exported, not resumed: start a new run")
    if shared.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a fastforec training checkpoint")
    if shared["world_size"] != dist.world_size:
        raise CheckpointError(f"'{path}' was written by {shared['world_size']} ranks; resume with the same "
                              f"number of processes (now {dist.world_size})")
    check_same_settings(saved_config(shared["config"]), config.to_dict(), RESUME_MUST_MATCH, path=path)
    return Resumable(path, shared, own)


def check_same_weight_precision(resumable: Resumable, ds: dict[str, Any]) -> None:
    """Refuse, before the engine is built, a resume whose weights would change precision: the bf16
    and fp16 blocks keep fp32 master weights in the optimizer state, which an fp32 or autocast run
    has no place for (and the reverse). ``ds``: this run's deepspeed block, resolved."""
    was = precision_mode(resumable.shared["config"].get("deepspeed") or {})
    now = precision_mode(ds)
    if PARAM_DTYPES.get(was) == PARAM_DTYPES.get(now):
        return  # fp32 <-> torch_autocast: the same fp32 weights and optimizer state
    fix = [f"--set deepspeed.{name}.enabled={str(name == was).lower()}" for name in (was, now) if name != "fp32"]
    raise CheckpointError(f"checkpoint '{resumable.path}' was trained in {was}, this run would train in {now}; resume "
                          f"in the checkpoint's precision ({' '.join(fix)}) or start a new run")


def saved_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the meaning it had when saved: a config from before
    ``model.decoder`` existed was trained with the legacy decoder, not today's default; one from
    before base x aux names its method with ``method.name``."""
    raw = upgrade_legacy_keys(raw)
    model = raw.get("model")
    if isinstance(model, dict) and "decoder" not in model:
        return {**raw, "model": {**model, "decoder": LEGACY_DECODER}}
    return raw


def load_trained_weights(path: str | Path) -> TrainedWeights:
    """The weights, config and dataset table of a training checkpoint (a file, or a run directory:
    its newest), checked to be one."""
    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    if state.get("format") not in READABLE_FORMATS:
        if (shared := shared_file_of(ckpt_path)) is not None:
            raise CheckpointError(f"'{ckpt_path}' is rank {shared[1]}'s part of checkpoint '{shared[0].name}' (its "
                                  f"optimizer partition, counters and RNG, no network); give '{shared[0]}' or the "
                                  f"run directory")
        raise CheckpointError(f"'{ckpt_path}' is not a fastforec training checkpoint (format "
                              f"{state.get('format')!r}, expected one of {', '.join(READABLE_FORMATS)})")
    missing = [k for k in ("config", "dataset", "student") if not isinstance(state.get(k), dict)]
    if missing:
        raise CheckpointError(f"'{ckpt_path}' is not a complete fastforec training checkpoint (no "
                              f"{', '.join(missing)})")
    try:
        config = config_from_dict(saved_config(state["config"]))
    except ValueError as e:
        raise CheckpointError(f"'{ckpt_path}': its saved config is not valid ({e})") from None
    return TrainedWeights(ckpt_path, config, state["dataset"], state["student"], state.get("teacher"))
