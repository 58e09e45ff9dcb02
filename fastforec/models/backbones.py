"""ResNet backbones with a uniform feature interface: ``forward(x) -> (c1, c4)``.

c1 is the stride-4 map (the low-level skip of DeepLabV3+), c4 the last stage at the output
stride (8 or 16, by dilating the last stages instead of striding). timm provides the networks;
its ResNets share torchvision's parameter names, so torchvision checkpoints load directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

from fastforec.checkpoint import NOT_TENSORS, first_line, refused_pickle
from fastforec.errors import UserError

log = logging.getLogger(__name__)

BackboneName = Literal["resnet18", "resnet50", "resnet101", "resnet101c"]
# resnet101c: the deep-stem ("V1c") ResNet-101 of mmseg/U2PL/UniMatch: three 3x3 convs replace the 7x7 stem.
BACKBONES: tuple[str, ...] = ("resnet18", "resnet50", "resnet101", "resnet101c")
LOW_LEVEL_STAGE, LAST_STAGE = 1, 4
RESIDUAL_STAGE_PREFIX = "layer"  # torchvision/timm name of the residual stages: layer1..layer4
BN_COUNTER = "num_batches_tracked"
FASTFOREC_ENCODER_PREFIX = "backbone.body."  # where a fastforec checkpoint keeps the encoder


class PretrainedError(UserError, ValueError):
    """A pretrained weight file is missing, unreadable or does not fit the backbone."""


class ResNetBackbone(nn.Module):
    def __init__(self, *, name: BackboneName, output_stride: int):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone '{name}' is not supported; choose one of {', '.join(BACKBONES)}")
        self.body = timm.create_model(name, pretrained=False, features_only=True,
                                      output_stride=output_stride, out_indices=(LOW_LEVEL_STAGE, LAST_STAGE))
        self.low_channels, self.high_channels = self.body.feature_info.channels()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1, c4 = self.body(x)
        return c1, c4

    def load_pretrained(self, path: str | Path) -> tuple[list[str], list[str]]:
        """Load a local torchvision-format ResNet state dict. Returns (missing, unexpected) keys.

        The classifier (``fc.*``) is expected to be unused and is not reported.
        """
        path = Path(path)
        if not path.is_file():
            raise PretrainedError(f"pretrained weights '{path}' do not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated/corrupt archives
            if refused_pickle(e):
                raise PretrainedError(f"pretrained weights '{path}' {NOT_TENSORS}") from None
            raise PretrainedError(f"pretrained weights '{path}' cannot be read ({first_line(e)})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if isinstance(state, dict) and isinstance(state.get("student"), dict) and "format" in state:
            # A fastforec training checkpoint: its student's encoder (pretraining on other data).
            state = {k[len(FASTFOREC_ENCODER_PREFIX):]: v for k, v in state["student"].items()
                     if k.startswith(FASTFOREC_ENCODER_PREFIX)}
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise PretrainedError(f"'{path}' is not a state dict of tensors (a torchvision ResNet checkpoint is expected)")
        own = self.body.state_dict()
        matched = {k: v for k, v in state.items() if k in own}
        for k, v in matched.items():
            if v.shape != own[k].shape:
                raise PretrainedError(f"'{path}': parameter '{k}' has shape {tuple(v.shape)}, the backbone "
                                      f"expects {tuple(own[k].shape)}; is it the right ResNet depth?")
        if not matched:
            raise PretrainedError(f"'{path}': no parameter name matches the backbone; expected torchvision "
                                  f"ResNet names such as 'conv1.weight', 'layer1.0.conv1.weight'")
        missing = sorted(set(own) - set(matched))
        unexpected = sorted(k for k in set(state) - set(own) if not k.startswith("fc."))
        # ResNet-50 and -101 share every shape and differ only in the number of layer3 blocks,
        # so a wrong-depth file would otherwise load "successfully" with random blocks left.
        # Stem differences (torchvision weights into the deep-stem resnet101c) stay warnings, and
        # so does a missing BN step counter: torchvision's published weights predate it.
        stage_missing = [k for k in missing if k.startswith(RESIDUAL_STAGE_PREFIX) and not k.endswith(BN_COUNTER)]
        stage_unexpected = [k for k in unexpected if k.startswith(RESIDUAL_STAGE_PREFIX)]
        if stage_missing or stage_unexpected:
            raise PretrainedError(
                f"'{path}': the residual stages do not match the backbone ({len(stage_missing)} tensors "
                f"missing from the file, e.g. {stage_missing[:1]}; {len(stage_unexpected)} not in the "
                f"backbone, e.g. {stage_unexpected[:1]}); is it the right ResNet depth?")
        self.body.load_state_dict(matched, strict=False)
        log.info("loaded %d tensors from %s; missing %d, unexpected %d", len(matched), path, len(missing), len(unexpected))
        if missing:
            log.warning("pretrained %s: missing keys: %s", path, ", ".join(missing[:10]))
        if unexpected:
            log.warning("pretrained %s: unexpected keys: %s", path, ", ".join(unexpected[:10]))
        return missing, unexpected
