"""Models from checkpoints, for evaluation, prediction and visualisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from fastforec.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from fastforec.config import Config, config_from_dict
from fastforec.export_format import read_export
from fastforec.models import DeepLabV3Plus, deeplabv3plus

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
    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    if "student" not in state or "config" not in state:
        raise CheckpointError(f"'{ckpt_path}' is not a fastforec training checkpoint (no student/config)")
    cfg = config_from_dict(state["config"])
    dataset = state["dataset"]
    if weights == "teacher" and state.get("teacher") is None:
        raise CheckpointError(f"'{ckpt_path}' has no teacher (method {cfg.method.label}); use the student weights")
    model = deeplabv3plus(backbone=cfg.model.backbone, num_classes=dataset["num_classes"],
                          output_stride=cfg.model.output_stride, decoder_channels=cfg.model.decoder_channels,
                          backbone_width=cfg.model.backbone_width,
                          reconstruction=cfg.method.reconstruction if weights == "student" else None)
    model.load_state_dict(state[weights])
    return model.to(device).eval(), cfg, dataset


def segmentation_network(path: str | Path, weights: Weights) -> tuple[DeepLabV3Plus, Config, dict[str, Any], Path]:
    """(encoder + segmentation decoder in eval mode on the CPU, config, dataset info, checkpoint file)."""
    ckpt = resolve_checkpoint(path)
    model, cfg, dataset = load_trained_model(ckpt, weights=weights, device="cpu")
    if model.aux_head is not None:
        model = model.segmentation_copy()
    return model.eval(), cfg, dataset, ckpt
