"""What every segmentation network here shares: an encoder giving a tuple of feature maps, a
segmentation head and an optional auxiliary head of the same class, and the feature
perturbations the methods train with.

A family (``deeplab.py``: DeepLabV3+ on ResNets; ``dpt.py``: DPT on DINOv2 ViTs) provides

- ``backbone(x)`` -> a tuple of (B, C_i, H_i, W_i) maps (ResNet: (c1, c4); ViT: four token maps),
- heads with ``features(*maps)`` (the map entering the last 1x1 conv: the auxiliary head's
  "latent image") and ``classifier`` (that conv), and an ``align_corners`` for the final resize.

Perturbations act on the encoder maps before the segmentation head only; the auxiliary head
always decodes the clean maps:

- ``fp_dropout`` (UniMatch): ``Dropout2d`` on samples ``fp_from:``, decoded in one batch with
  the clean maps (so BatchNorm sees both, as UniMatch decodes them);
- ``comp_drop_keep`` (UniMatch V2's complementary channel dropout): the batch is two halves (the
  two strong views of the same images); per pair of samples one Bernoulli(0.5) x 2 channel mask
  ``m`` for the first and ``2 - m`` for the second, so that together they see every channel once
  at double weight; a share ``comp_drop_keep`` of the pairs is left undropped (mask 1). One mask per
  sample serves every map of the same width (the ViT's four levels share theirs, as in UniMatch V2).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics: inputs arrive as RGB in [0, 1] (the reconstruction target), the
# backbone wants them standardised.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUX_CHANNELS = {"rgb": 3, "fgbg": 1}
AUX_OUTPUT = {"rgb": "rec", "fgbg": "fgbg"}  # the key the auxiliary map has in the output dict
# Complementary dropout draws each channel of the first view with probability 1/2 and scales
# by 2: the pair's masks then sum to 2 everywhere, and each has mean 1 (no rescaling at test time).
COMP_DROP_PROB = 0.5
COMP_DROP_SCALE = 2.0


def resize(x: torch.Tensor, size: torch.Size | tuple[int, int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def complementary_masks(pairs: int, channels: int, *, keep: float, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """(2 * pairs, channels) channel multipliers: rows ``i`` and ``pairs + i`` are complementary
    (``m`` and ``2 - m``, m in {0, 2}), except for ``int(pairs * keep)`` pairs, picked at random,
    left at 1 (UniMatch V2's ``num_kept``)."""
    first = torch.bernoulli(torch.full((pairs, channels), COMP_DROP_PROB, device=device)) * COMP_DROP_SCALE
    kept = torch.randperm(pairs, device=device)[: int(pairs * keep)]
    first[kept] = 1.0
    return torch.cat([first, COMP_DROP_SCALE - first]).to(dtype)


class Segmentor(nn.Module):
    """``forward(x)`` with x RGB in [0, 1] returns a dict of maps at the input resolution:
    ``seg`` (B, num_classes), and ``rec`` (B, 3) or ``fgbg`` (B, 1) when an auxiliary head exists;
    ``latent`` (the auxiliary head's last feature map) as well with ``return_latent=True``."""

    def __init__(self, *, backbone: nn.Module, seg_head: nn.Module, aux_head: nn.Module | None,
                 aux_kind: str | None):
        super().__init__()
        self.backbone = backbone
        self.seg_head = seg_head
        self.aux_head = aux_head
        self.aux_kind = aux_kind
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype)))

    def forward(self, x: torch.Tensor, return_latent: bool = False, fp_dropout: float = 0.0,
                fp_from: int = 0, comp_drop_keep: float | None = None) -> dict[str, torch.Tensor]:
        """``fp_dropout`` > 0 adds ``seg_fp``, ``comp_drop_keep`` perturbs ``seg`` itself (module doc)."""
        size = x.shape[-2:]
        up = self.seg_head.align_corners
        maps = self.encode(x)
        if fp_dropout > 0:
            n = x.shape[0]
            both = [torch.cat([m, F.dropout2d(m[fp_from:], p=fp_dropout, training=True)]) for m in maps]
            seg = resize(self.seg_head(*both), size, up)
            out = {"seg": seg[:n], "seg_fp": seg[n:]}
        elif comp_drop_keep is not None:
            out = {"seg": resize(self.seg_head(*self._complementary_dropout(maps, comp_drop_keep)), size, up)}
        else:
            out = {"seg": resize(self.seg_head(*maps), size, up)}
        if self.aux_head is not None:
            latent = self.aux_head.features(*maps)
            out[AUX_OUTPUT[self.aux_kind]] = resize(self.aux_head.classifier(latent), size, self.aux_head.align_corners)
            if return_latent:
                out["latent"] = latent
        elif return_latent:
            raise ValueError("return_latent=True needs a model built with reconstruction='rgb' or 'fgbg'")
        return out

    @staticmethod
    def _complementary_dropout(maps: tuple[torch.Tensor, ...], keep: float) -> list[torch.Tensor]:
        n = maps[0].shape[0]
        if n % 2:
            raise ValueError(f"complementary dropout needs two equal halves (the two strong views), got a batch of {n}")
        masks: dict[int, torch.Tensor] = {}
        out = []
        for m in maps:
            c = m.shape[1]
            if c not in masks:
                masks[c] = complementary_masks(n // 2, c, keep=keep, device=m.device, dtype=m.dtype)
            out.append(m * masks[c][:, :, None, None])
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder parameters (they get ``head_lr_mult``); the rest is the backbone."""
        heads = [self.seg_head] + ([self.aux_head] if self.aux_head is not None else [])
        return [p for h in heads for p in h.parameters()]

    def segmentation_copy(self) -> "Segmentor":
        """A deep copy of encoder + segmentation head (the EMA teacher's architecture)."""
        return type(self)(backbone=copy.deepcopy(self.backbone), seg_head=copy.deepcopy(self.seg_head),
                          aux_head=None, aux_kind=None)
