"""The one place a network is built from its model config (training, evaluation, export, FLOPs)."""

from __future__ import annotations

from typing import Literal

from fastforec.config import ConfigError, ModelConfig
from fastforec.models.backbones import PretrainedError, resolve_pretrained
from fastforec.models.deeplab import deeplabv3plus
from fastforec.models.dpt import dpt
from fastforec.models.segmentor import Segmentor
from fastforec.models.vit import VIT_SPECS


def build_model(cfg: ModelConfig, *, num_classes: int, reconstruction: Literal["rgb", "fgbg"] | None,
                with_pretrained: bool = False, show_pretrained: bool = True) -> Segmentor:
    """The network ``cfg`` describes: DPT on a DINOv2 / DINOv3 ViT, or DeepLabV3+ on a ResNet.
    ``with_pretrained`` loads ``cfg.pretrained`` into the backbone (training only: evaluation and
    export take every weight from a checkpoint)."""
    pretrained = cfg.pretrained if with_pretrained else None
    if cfg.is_vit:
        return dpt(backbone=cfg.backbone, num_classes=num_classes, reconstruction=reconstruction, pretrained=pretrained,
                   backbone_width=cfg.backbone_width, activation_checkpointing=cfg.activation_checkpointing,
                   show_pretrained=show_pretrained)
    return deeplabv3plus(backbone=cfg.backbone, num_classes=num_classes, output_stride=cfg.output_stride,
                         decoder=cfg.decoder, reconstruction=reconstruction, pretrained=pretrained,
                         decoder_channels=cfg.decoder_channels, backbone_width=cfg.backbone_width,
                         show_pretrained=show_pretrained)


def check_pretrained(cfg: ModelConfig) -> None:
    """Fail early (before any process group) when ``cfg.pretrained`` names no file: a path that does
    not exist, or timm weights that are not in the local cache (nothing is downloaded)."""
    if cfg.pretrained is None:
        return
    arch = VIT_SPECS[cfg.backbone].timm_name if cfg.is_vit else cfg.backbone
    try:
        weights = resolve_pretrained(cfg.pretrained, arch)
    except PretrainedError as e:
        raise ConfigError(str(e)) from None
    if not weights.is_file():
        raise ConfigError(f"model.pretrained: file '{cfg.pretrained}' does not exist; fix the path or set it to null")
