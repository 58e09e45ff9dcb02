"""Models from checkpoints, for evaluation, prediction and visualisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from fastforec.checkpoint import load_trained_weights
from fastforec.checkpoint_files import CheckpointError, first_line, resolve_checkpoint
from fastforec.config import Config
from fastforec.export_format import read_export
from fastforec.models import DeepLabV3Plus, build_model

Weights = Literal["student", "teacher"]
SAFETENSORS_SUFFIX = ".safetensors"  # `fastforec export --format safetensors`


def load_trained_model(path: str | Path, *, weights: Weights | None = "student", device: torch.device | str = "cpu"
                       ) -> tuple[DeepLabV3Plus, Config, dict[str, Any]]:
    """(model in eval mode, its run config, the checkpoint's dataset info) from a checkpoint, a run
    dir, or a ``fastforec export`` safetensors file.

    The teacher has no reconstruction decoder; ``weights="student"`` keeps it. An export holds one
    set of weights (the segmentation network only): ``weights=None`` takes it, a named one must match.
    """
    if Path(path).suffix == SAFETENSORS_SUFFIX and Path(path).is_file():
        return read_export(path, weights=weights, device=device)
    weights = weights or "student"
    trained = load_trained_weights(path)
    cfg = trained.config
    if weights == "teacher" and trained.teacher is None:
        raise CheckpointError(f"'{trained.path}' has no teacher (method {cfg.method.label}); use the student weights")
    model = build_model(cfg.model, num_classes=trained.dataset["num_classes"],
                        reconstruction=cfg.method.reconstruction if weights == "student" else None)
    try:
        model.load_state_dict(trained.student if weights == "student" else trained.teacher)
    except RuntimeError as e:
        raise CheckpointError(f"'{trained.path}': its {weights} weights do not fit the architecture of its own "
                              f"config ({first_line(e)})") from None
    return model.to(device).eval(), cfg, trained.dataset


def segmentation_network(path: str | Path, weights: Weights) -> tuple[DeepLabV3Plus, Config, dict[str, Any], Path]:
    """(encoder + segmentation decoder in eval mode on the CPU, config, dataset info, checkpoint file)."""
    ckpt = resolve_checkpoint(path)
    model, cfg, dataset = load_trained_model(ckpt, weights=weights, device="cpu")
    if model.aux_head is not None:
        model = model.segmentation_copy()
    return model.eval(), cfg, dataset, ckpt
