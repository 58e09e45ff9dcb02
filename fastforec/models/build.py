"""The one place a network is built from its model config (training, evaluation, export, FLOPs)."""

from __future__ import annotations

from typing import Literal

from fastforec.config import ModelConfig
from fastforec.models.deeplab import DeepLabV3Plus, deeplabv3plus


def build_model(cfg: ModelConfig, *, num_classes: int, reconstruction: Literal["rgb", "fgbg"] | None,
                with_pretrained: bool = False, show_pretrained: bool = True) -> DeepLabV3Plus:
    """The network ``cfg`` describes. ``with_pretrained`` loads ``cfg.pretrained`` into the
    backbone (training only: evaluation and export take every weight from a checkpoint)."""
    return deeplabv3plus(backbone=cfg.backbone, num_classes=num_classes, output_stride=cfg.output_stride,
                         decoder=cfg.decoder, reconstruction=reconstruction,
                         pretrained=cfg.pretrained if with_pretrained else None,
                         decoder_channels=cfg.decoder_channels, backbone_width=cfg.backbone_width,
                         show_pretrained=show_pretrained)
