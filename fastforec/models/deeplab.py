"""DeepLabV3+ with an optional reconstruction (or fg/bg) decoder sharing the encoder.

The decoder is built as each source defines it (``model.decoder``), so that a recipe trains the
network its paper trained and the source's trained checkpoints load by name and shape:

- ``unimatch``: UniMatch's DeepLabV3+ (LiheYoung/UniMatch ``model/semseg/deeplabv3plus.py``):
  ASPP of five Conv-BN-ReLU branches and a 1x1 projection, **no dropout**; a 48-channel 1x1
  reduce of c1; two 3x3 fuse convs; a 1x1 classifier; every resize ``align_corners=True``.
- ``u2pl``: U2PL's ``dec_deeplabv3_plus`` (Haochen-Wang409/U2PL ``u2pl/models/decoder.py``) without
  its contrastive representation head: a 256-channel 1x1 low-level conv *with* bias; the five ASPP
  branches concatenated with no projection, then a 3x3 conv + Dropout2d(0.1); a classifier of two
  3x3 convs with bias, each followed by Dropout2d(0.1), then the 1x1; ``align_corners=True``.
  U2PL's ResNet also pools its stem with ``ceil_mode=True`` (the builder sets that too).
- ``torchvision``: fastforec's decoder before 2026-12 (torchvision's choices: Dropout(0.5) after
  the ASPP projection, ``align_corners=False``). Kept so checkpoints trained with it still load;
  no published recipe uses it.

Every decoder is one class serving both heads: ``features(c1, c4)`` is the map entering the last
1x1 conv (the reconstruction head's "latent image"), ``classifier`` is that conv. Only its output
channels differ between the segmentation and the auxiliary head (paper: "the same structure as the
segmentation decoder; only the channel number of the last layer differs").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastforec.config import DECODERS, BackboneName, DecoderName
from fastforec.models.backbones import ResNetBackbone
from fastforec.models.segmentor import AUX_CHANNELS, Segmentor, resize

ASPP_CHANNELS = 256
UNIMATCH_REDUCE_CHANNELS = 48  # UniMatch's low-level reduce width
TORCHVISION_ASPP_DROPOUT = 0.5  # torchvision's DeepLabHead dropout after the ASPP projection
U2PL_DROPOUT = 0.1  # U2PL's Dropout2d after its ASPP conv and after each classifier conv
DILATIONS = {16: (6, 12, 18), 8: (12, 24, 36)}
# Both peers resize with align_corners=True; torchvision (and so the legacy decoder) with False.
# The setting changes ~11 % of the predicted pixels of the same weights, so it follows the source.
ALIGN_CORNERS = {"unimatch": True, "u2pl": True, "torchvision": False}


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1, bias: bool = False) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    """Global-average-pool branch. Its 1x1 map is broadcast to the input size, which is what a
    bilinear resize of a 1x1 map gives with either align_corners."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv_bn_relu(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Five branches concatenated in the source's order (UniMatch: 1x1, three dilated, pool; U2PL:
    pool first), then ``project``: UniMatch a 1x1 Conv-BN-ReLU; U2PL a 3x3 Conv-BN-ReLU and
    Dropout2d(0.1); torchvision a 1x1 Conv-BN-ReLU and Dropout(0.5)."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, int, int], *, variant: DecoderName):
        super().__init__()
        convs = [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, d) for d in dilations]
        pool = ImagePooling(cin, cout)
        self.branches = nn.ModuleList([pool] + convs if variant == "u2pl" else convs + [pool])
        width = cout * len(self.branches)
        if variant == "u2pl":
            self.project = nn.Sequential(*_conv_bn_relu(width, cout, 3), nn.Dropout2d(U2PL_DROPOUT))
        elif variant == "torchvision":
            self.project = nn.Sequential(_conv_bn_relu(width, cout, 1), nn.Dropout(TORCHVISION_ASPP_DROPOUT))
        else:
            self.project = _conv_bn_relu(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class Decoder(nn.Module):
    """A DeepLabV3+ decoder as ``variant`` defines it (module doc); ``out_channels`` is the width
    of the last 1x1 conv, ``classifier`` (classes, 3 for RGB, 1 for fg/bg)."""

    def __init__(self, *, variant: DecoderName, low_channels: int, high_channels: int, out_channels: int,
                 dilations: tuple[int, int, int], channels: int = ASPP_CHANNELS):
        super().__init__()
        if variant not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {variant!r}")
        self.variant = variant
        self.align_corners = ALIGN_CORNERS[variant]
        self.aspp = ASPP(high_channels, channels, dilations, variant=variant)
        if variant == "u2pl":
            self.reduce = _conv_bn_relu(low_channels, channels, 1, bias=True)
            self.fuse = nn.Sequential(*_conv_bn_relu(2 * channels, channels, 3, bias=True), nn.Dropout2d(U2PL_DROPOUT),
                                      *_conv_bn_relu(channels, channels, 3, bias=True), nn.Dropout2d(U2PL_DROPOUT))
        else:
            self.reduce = _conv_bn_relu(low_channels, UNIMATCH_REDUCE_CHANNELS, 1)
            fuse = [_conv_bn_relu(channels + UNIMATCH_REDUCE_CHANNELS, channels, 3),
                    _conv_bn_relu(channels, channels, 3)]
            # UniMatch's fuse is one flat Sequential (its parameter names); the legacy decoder nested it
            self.fuse = nn.Sequential(*fuse) if variant == "torchvision" else nn.Sequential(*fuse[0], *fuse[1])
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def features(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        high = resize(self.aspp(c4), c1.shape[-2:], self.align_corners)
        return self.fuse(torch.cat([self.reduce(c1), high], dim=1))

    def forward(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(c1, c4))


class DeepLabV3Plus(Segmentor):
    """DeepLabV3+: ``backbone`` gives (c1, c4), each head is a ``Decoder`` (module doc)."""


def deeplabv3plus(*, backbone: BackboneName, num_classes: int, output_stride: int = 16,
                  decoder: DecoderName = "unimatch", reconstruction: Literal["rgb", "fgbg"] | None = "rgb",
                  pretrained: str | Path | None = None, decoder_channels: int = ASPP_CHANNELS,
                  backbone_width: float = 1.0, show_pretrained: bool = True) -> DeepLabV3Plus:
    """Build DeepLabV3+ (optionally with the reconstruction or fg/bg decoder).

    ``decoder``: whose DeepLabV3+ decoder (module doc): ``unimatch``, ``u2pl`` or ``torchvision``.
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
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    encoder = ResNetBackbone(name=backbone, output_stride=output_stride, width=backbone_width,
                             maxpool_ceil=decoder == "u2pl")
    if pretrained is not None:
        encoder.load_pretrained(pretrained, show=show_pretrained)

    def head(out_channels: int) -> Decoder:
        return Decoder(variant=decoder, low_channels=encoder.low_channels, high_channels=encoder.high_channels,
                       out_channels=out_channels, dilations=DILATIONS[output_stride], channels=decoder_channels)

    aux = head(AUX_CHANNELS[reconstruction]) if reconstruction is not None else None
    return DeepLabV3Plus(backbone=encoder, seg_head=head(num_classes), aux_head=aux, aux_kind=reconstruction)
