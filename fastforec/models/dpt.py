"""DPT on DINOv2, as UniMatch V2 defines it (LiheYoung/UniMatch-V2 ``model/semseg/dpt.py`` and
``model/util/blocks.py``), with its parameter names and shapes so that its trained checkpoints
load exactly (``peer_checkpoints``: ``head.*`` -> ``seg_head.*``). On DINOv3 the same head with
the same widths per size decodes 16-pixel patches instead of 14 (models/vit.py).

The head, for the four token maps of the backbone at 1/14 of the input (C channels each):

- ``projects.i``: 1x1 conv C -> out_channels[i]; ``resize_layers``: a 4x4 stride-4 transposed
  conv (1/14 -> 4/14), a 2x2 stride-2 one (2/14), identity (1/14), a 3x3 stride-2 conv (1/28);
- ``scratch.layerI_rn``: 3x3 conv to ``features`` channels, no bias;
- ``scratch.refinenet4..1``: fusion blocks (two residual conv units of ReLU-conv3x3-ReLU-conv3x3,
  the first applied to the skip input; a bilinear resize with ``align_corners=True`` to the next
  level's size, or x2 for the last; a 1x1 ``out_conv``), no BatchNorm (UniMatch V2: use_bn=False);
- ``scratch.output_conv``: 3x3 conv, ReLU, 1x1 conv to the classes, at 8/14 of the input.

``refinenet4`` has a first residual unit that its single input never uses. It exists so that
the checkpoints load; here it is frozen (``requires_grad=False``), which is what it is in
UniMatch V2 too: it never receives a gradient, and AdamW skips parameters without one.

The auxiliary head (rec / forec / fgbg) is the same head with 3 / 1 outputs; its latent image is
the map entering ``output_conv``'s last conv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastforec.models.segmentor import AUX_CHANNELS, Segmentor
from fastforec.models.vit import VIT_SPECS, scaled, vit_backbone

ALIGN_CORNERS = True  # every DPT resize, and the final one to the input size


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in place: x is the residual, added back below
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=ALIGN_CORNERS)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=ALIGN_CORNERS)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """``features(*maps)`` is the map entering the last 1x1 conv, ``classifier`` that conv."""

    align_corners = ALIGN_CORNERS

    def __init__(self, *, in_channels: int, features: int, out_channels: tuple[int, int, int, int], classes: int):
        super().__init__()
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, 1) for c in out_channels])
        c1, c2, _, c4 = out_channels
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(c1, c1, 4, stride=4),
                                            nn.ConvTranspose2d(c2, c2, 2, stride=2),
                                            nn.Identity(), nn.Conv2d(c4, c4, 3, stride=2, padding=1)])
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(features))
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)  # never used (module doc)
        self.scratch.output_conv = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(True),
                                                 nn.Conv2d(features, classes, 1))

    @property
    def classifier(self) -> nn.Conv2d:
        return self.scratch.output_conv[2]

    def features(self, *maps: torch.Tensor) -> torch.Tensor:
        s = self.scratch
        l1, l2, l3, l4 = (rn(resize(proj(m))) for m, proj, resize, rn in
                          zip(maps, self.projects, self.resize_layers, (s.layer1_rn, s.layer2_rn, s.layer3_rn,
                                                                        s.layer4_rn)))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        return s.output_conv[1](s.output_conv[0](path))

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(*maps))


class DPT(Segmentor):
    """DPT on a DINOv2 or DINOv3 backbone (``Segmentor``'s interface)."""


def dpt(*, backbone: str, num_classes: int, reconstruction: Literal["rgb", "fgbg"] | None = "rgb",
        pretrained: str | Path | None = None, backbone_width: float = 1.0, activation_checkpointing: bool = False,
        show_pretrained: bool = True) -> DPT:
    """Build UniMatch V2's DPT on ``backbone`` (``dinov2_vit{s,b,l}14``, ``dinov3_vit{s,b,l}16``),
    optionally with the auxiliary head. ``backbone_width`` scales the ViT and the head's widths
    (1.0 for released weights)."""
    if backbone not in VIT_SPECS:
        raise ValueError(f"DPT takes a DINO ViT backbone ({', '.join(VIT_SPECS)}), got {backbone!r}")
    if reconstruction is not None and reconstruction not in AUX_CHANNELS:
        raise ValueError(f"reconstruction must be 'rgb', 'fgbg' or None, got {reconstruction!r}")
    spec = VIT_SPECS[backbone]
    encoder = vit_backbone(name=backbone, width=backbone_width, activation_checkpointing=activation_checkpointing)
    if pretrained is not None:
        encoder.load_pretrained(pretrained, show=show_pretrained)
    # at width 1.0 these are UniMatch V2's widths (every one is above scaled()'s floor)
    features = scaled(spec.dpt_features, backbone_width)
    channels = tuple(scaled(c, backbone_width) for c in spec.dpt_channels)

    def head(classes: int) -> DPTHead:
        return DPTHead(in_channels=encoder.embed_dim, features=features, out_channels=channels, classes=classes)

    aux = head(AUX_CHANNELS[reconstruction]) if reconstruction is not None else None
    return DPT(backbone=encoder, seg_head=head(num_classes), aux_head=aux, aux_kind=reconstruction)
