"""DeepLabV3+ with an optional reconstruction (or fg/bg) decoder sharing the encoder.

Both heads are instances of one ``Decoder`` class (ASPP on c4, 48-channel low-level reduce of c1,
two 3x3 fuse convs, a 1x1 classifier); only the classifier's output channels differ. The
reconstruction head's fused features are the paper's "latent images": the reconstruction is a
1x1 conv of them (paper eq. 2), then bilinear upsampling, which commutes with the 1x1 conv.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastforec.models.backbones import BackboneName, ResNetBackbone

ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
ASPP_DROPOUT = 0.5
DILATIONS = {16: (6, 12, 18), 8: (12, 24, 36)}
# ImageNet statistics: inputs arrive as RGB in [0, 1] (the reconstruction target), the
# backbone wants them standardised.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUX_CHANNELS = {"rgb": 3, "fgbg": 1}
AUX_OUTPUT = {"rgb": "rec", "fgbg": "fgbg"}  # the key the auxiliary map has in the output dict


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, dilations: tuple[int, int, int]):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)]
                                      + [_conv_bn_relu(cin, cout, 3, d) for d in dilations]
                                      + [ImagePooling(cin, cout)])
        self.project = nn.Sequential(_conv_bn_relu(cout * len(self.branches), cout, 1), nn.Dropout(ASPP_DROPOUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: ``features(c1, c4)`` is the map entering the last 1x1 conv."""

    def __init__(self, *, low_channels: int, high_channels: int, out_channels: int, dilations: tuple[int, int, int],
                 channels: int = ASPP_CHANNELS):
        super().__init__()
        self.aspp = ASPP(high_channels, channels, dilations)
        self.reduce = _conv_bn_relu(low_channels, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(_conv_bn_relu(channels + LOW_LEVEL_CHANNELS, channels, 3),
                                  _conv_bn_relu(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def features(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(self.aspp(c4), size=c1.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.reduce(c1), high], dim=1))

    def forward(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(c1, c4))


class DeepLabV3Plus(nn.Module):
    """``forward(x)`` with x RGB in [0, 1] returns a dict of maps at the input resolution:
    ``seg`` (B, num_classes), and ``rec`` (B, 3) or ``fgbg`` (B, 1) when an auxiliary head exists;
    ``latent`` (B, decoder_channels, H/4, W/4) as well with ``return_latent=True``."""

    def __init__(self, *, backbone: ResNetBackbone, seg_head: Decoder, aux_head: Decoder | None,
                 aux_kind: str | None):
        super().__init__()
        self.backbone = backbone
        self.seg_head = seg_head
        self.aux_head = aux_head
        self.aux_kind = aux_kind
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, return_latent: bool = False, fp_dropout: float = 0.0,
                fp_from: int = 0) -> dict[str, torch.Tensor]:
        """``fp_dropout`` > 0 adds ``seg_fp``: the segmentation of samples ``fp_from:`` decoded again
        from their encoder features c1 and c4 under channel dropout (UniMatch's feature perturbation).
        Clean and perturbed features go through the seg head in one batch, as UniMatch decodes them,
        so its BatchNorm sees both; the auxiliary head sees the clean features only."""
        size = x.shape[-2:]
        c1, c4 = self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        if fp_dropout > 0:
            n = x.shape[0]
            drop = lambda t: F.dropout2d(t[fp_from:], p=fp_dropout, training=True)  # noqa: E731
            seg = _upsample(self.seg_head(torch.cat([c1, drop(c1)]), torch.cat([c4, drop(c4)])), size)
            out = {"seg": seg[:n], "seg_fp": seg[n:]}
        else:
            out = {"seg": _upsample(self.seg_head(c1, c4), size)}
        if self.aux_head is not None:
            latent = self.aux_head.features(c1, c4)
            out[AUX_OUTPUT[self.aux_kind]] = _upsample(self.aux_head.classifier(latent), size)
            if return_latent:
                out["latent"] = latent
        elif return_latent:
            raise ValueError("return_latent=True needs a model built with reconstruction='rgb' or 'fgbg'")
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder parameters (they get ``head_lr_mult``); the rest is the backbone."""
        heads = [self.seg_head] + ([self.aux_head] if self.aux_head is not None else [])
        return [p for h in heads for p in h.parameters()]

    def segmentation_copy(self) -> "DeepLabV3Plus":
        """A deep copy of encoder + segmentation decoder (the mean teacher's architecture)."""
        return DeepLabV3Plus(backbone=copy.deepcopy(self.backbone), seg_head=copy.deepcopy(self.seg_head),
                             aux_head=None, aux_kind=None)


def _upsample(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def deeplabv3plus(*, backbone: BackboneName, num_classes: int, output_stride: int = 16,
                  reconstruction: Literal["rgb", "fgbg"] | None = "rgb",
                  pretrained: str | Path | None = None, decoder_channels: int = ASPP_CHANNELS,
                  backbone_width: float = 1.0, show_pretrained: bool = True) -> DeepLabV3Plus:
    """Build DeepLabV3+ (optionally with the reconstruction or fg/bg decoder).

    ``pretrained``: ImageNet weights for the backbone: a local file (torchvision/timm, U2PL/UniMatch
    or mmseg naming) or ``"timm"`` / ``"timm:<name>"`` from the local cache (see backbones.py);
    ``show_pretrained`` prints the loaded/missing/unexpected table.
    ``decoder_channels``: ASPP / fuse width (256 in the paper; smaller for CPU-sized runs).
    ``backbone_width``: channel multiplier of the ResNet stages (1.0 for ImageNet weights).
    """
    if output_stride not in DILATIONS:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if reconstruction is not None and reconstruction not in AUX_CHANNELS:
        raise ValueError(f"reconstruction must be 'rgb', 'fgbg' or None, got {reconstruction!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    encoder = ResNetBackbone(name=backbone, output_stride=output_stride, width=backbone_width)
    if pretrained is not None:
        encoder.load_pretrained(pretrained, show=show_pretrained)

    def head(out_channels: int) -> Decoder:
        return Decoder(low_channels=encoder.low_channels, high_channels=encoder.high_channels,
                       out_channels=out_channels, dilations=DILATIONS[output_stride], channels=decoder_channels)

    aux = head(AUX_CHANNELS[reconstruction]) if reconstruction is not None else None
    return DeepLabV3Plus(backbone=encoder, seg_head=head(num_classes), aux_head=aux, aux_kind=reconstruction)
