"""DINOv2 ViT backbones (patch 14) as UniMatch V2 builds them, with the feature interface of the
other backbones: ``forward(x) -> four (B, C, H/14, W/14) maps``, the normalised outputs of the
blocks UniMatch V2 decodes (S/B: 2, 5, 8, 11; L: 4, 11, 17, 23), class token dropped.

timm provides the blocks (``vit_{small,base,large}_patch14_dinov2``: LayerScale, MLP FFN,
attention through ``F.scaled_dot_product_attention``, so flash / memory-efficient kernels on the
GPU); this module runs them itself for two things timm does differently from DINOv2:

- **position embeddings** are interpolated as DINOv2 does: bicubic with ``scale_factor =
  (grid + 0.1) / sqrt(N)`` (its ``interpolate_offset``, no antialias), in float32. timm resamples
  to the target size, which differs from DINOv2 by up to ~1e-2 away from 518 x 518, so that
  UniMatch V2's trained weights would not give its outputs at other sizes;
- **activation checkpointing** of each block (``model.activation_checkpointing``): the backward
  pass recomputes a block's activations instead of keeping them (about a third more compute for
  the memory of one block), what makes ViT-L at crop 518 with 4 + 4 images fit one 80 GB GPU.

Inputs whose sides are not multiples of 14 lose the remainder, as in DINOv2's patch embedding
(the segmentor resizes its output back to the input size).

Weights (``model.pretrained``): Meta's ``dinov2_vit{s,b,l}14_pretrain.pth`` and UniMatch V2's
renamed copies (``pretrained/dinov2_{small,base,large}.pth``) have the same keys, which are timm's;
``mask_token`` (DINOv2's masked-image-modelling token) is not used. A whole UniMatch V2 checkpoint
(``model`` / ``model_ema`` with ``module.backbone.`` keys) gives its encoder.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastforec.config import VIT_PATCH
from fastforec.models.backbones import PretrainedError, read_state_dict, resolve_pretrained, show_load

log = logging.getLogger(__name__)

PATCH = VIT_PATCH  # the config checks crops against the same patch size
IMG_SIZE = 518  # the size DINOv2's position embeddings were trained at: 37 x 37 patches
POS_OFFSET = 0.1  # DINOv2's interpolate_offset
LAYER_SCALE_INIT = 1.0  # UniMatch V2 builds DINOv2 with init_values=1.0 (timm's default is 1e-5)
HEAD_DIM = 64  # every DINOv2 size has 64-wide attention heads; backbone_width scales it
MIN_HEAD_DIM = 8
UNUSED_KEYS = {"mask_token": "DINOv2's mask token (its self-supervised pretraining only)"}
REGISTER_KEY = "register_tokens"
SEGMENTOR_PREFIX = "backbone."  # UniMatch V2's DPT keeps the encoder under it


@dataclass(frozen=True)
class VitSpec:
    """One DINOv2 size and the DPT head UniMatch V2 puts on it."""

    timm_name: str
    label: str
    embed_dim: int
    depth: int
    heads: int
    layers: tuple[int, ...]  # the blocks whose outputs the head decodes
    dpt_features: int
    dpt_channels: tuple[int, int, int, int]
    meta_file: str
    unimatch_file: str


VIT_SPECS: dict[str, VitSpec] = {
    "dinov2_vits14": VitSpec("vit_small_patch14_dinov2", "ViT-S/14", 384, 12, 6, (2, 5, 8, 11), 64,
                             (48, 96, 192, 384), "dinov2_vits14_pretrain.pth", "dinov2_small.pth"),
    "dinov2_vitb14": VitSpec("vit_base_patch14_dinov2", "ViT-B/14", 768, 12, 12, (2, 5, 8, 11), 128,
                             (96, 192, 384, 768), "dinov2_vitb14_pretrain.pth", "dinov2_base.pth"),
    "dinov2_vitl14": VitSpec("vit_large_patch14_dinov2", "ViT-L/14", 1024, 24, 16, (4, 11, 17, 23), 256,
                             (256, 512, 1024, 1024), "dinov2_vitl14_pretrain.pth", "dinov2_large.pth"),
}


def scaled(value: int, width: float) -> int:
    return max(MIN_HEAD_DIM, round(value * width))


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """DINOv2's position embeddings for a ``grid`` of patches: (1, 1 + h*w, C), class token first."""
    n = pos_embed.shape[1] - 1
    h, w = grid
    if h * w == n and h == w:
        return pos_embed
    side = math.sqrt(n)
    patch = pos_embed[:, 1:].float().reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((h + POS_OFFSET) / side, (w + POS_OFFSET) / side), mode="bicubic",
                          antialias=False)
    if patch.shape[-2:] != (h, w):  # the offset exists so that the floor of the scaled size is the grid
        raise RuntimeError(f"position embeddings interpolated to {tuple(patch.shape[-2:])}, expected {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([pos_embed[:, :1].float(), patch], dim=1).to(pos_embed.dtype)


class DinoV2Backbone(nn.Module):
    """``width`` scales the embedding (heads of ``64 * width`` channels) for CPU-sized networks
    trained from scratch; 1.0 is DINOv2's, the only width its weights fit."""

    def __init__(self, *, name: str, width: float = 1.0, activation_checkpointing: bool = False):
        super().__init__()
        if name not in VIT_SPECS:
            raise ValueError(f"backbone '{name}' is not a DINOv2 ViT; choose one of {', '.join(VIT_SPECS)}")
        spec = VIT_SPECS[name]
        self.name, self.spec, self.layers = name, spec, spec.layers
        narrow = {} if width == 1.0 else {"embed_dim": spec.heads * scaled(HEAD_DIM, width)}
        self.body = timm.create_model(spec.timm_name, pretrained=False, img_size=IMG_SIZE, num_classes=0,
                                      dynamic_img_size=True, init_values=LAYER_SCALE_INIT, **narrow)
        self.embed_dim = self.body.embed_dim
        self.activation_checkpointing = activation_checkpointing

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the remainder of a side that is not a multiple of 14 is dropped, as a stride-14 conv does
        x = x[..., : x.shape[-2] // PATCH * PATCH, : x.shape[-1] // PATCH * PATCH]
        tokens = self.body.patch_embed(x)  # (B, h, w, C): timm's dynamic size gives NHWC
        b, h, w, c = tokens.shape
        cls = self.body.cls_token.expand(b, -1, -1).to(tokens.dtype)
        t = torch.cat([cls, tokens.reshape(b, h * w, c)], dim=1)
        t = t + interpolate_pos_embed(self.body.pos_embed, (h, w)).to(t.dtype)
        out = []
        last = self.layers[-1]
        for i, block in enumerate(self.body.blocks[: last + 1]):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                t = checkpoint(block, t, use_reentrant=False)
            else:
                t = block(t)
            if i in self.layers:
                out.append(self.body.norm(t)[:, 1:].transpose(1, 2).reshape(b, c, h, w))
        return tuple(out)

    def load_pretrained(self, spec: str | Path, *, show: bool = True,
                        cache_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
        """Load DINOv2 weights (module doc) strictly; returns (missing, unexpected) (both empty, or it raises)."""
        path = resolve_pretrained(spec, self.spec.timm_name, cache_dir=cache_dir)
        state = read_state_dict(path)
        if not any(k.startswith("blocks.") for k in state) and any(k.startswith(SEGMENTOR_PREFIX) for k in state):
            state = {k[len(SEGMENTOR_PREFIX):]: v for k, v in state.items() if k.startswith(SEGMENTOR_PREFIX)}
        if REGISTER_KEY in state:
            raise PretrainedError(f"'{path}' is DINOv2 with registers ({state[REGISTER_KEY].shape[1]} register tokens); "
                                  f"UniMatch V2 uses DINOv2 without them: take dinov2_vit*14_pretrain.pth")
        self._check_size(state, path)
        own = self.body.state_dict()
        used = {k: v for k, v in state.items() if k not in UNUSED_KEYS}
        missing = sorted(set(own) - set(used))
        unexpected = sorted(set(used) - set(own))
        misshapen = [f"{k}: file {tuple(v.shape)}, backbone {tuple(own[k].shape)}" for k, v in used.items()
                     if k in own and v.shape != own[k].shape]
        if missing or unexpected or misshapen:
            raise PretrainedError(
                f"'{path}' does not fit {self.spec.label} ({len(missing)} tensors missing from the file, e.g. "
                f"{missing[:2]}; {len(unexpected)} not in the backbone, e.g. {unexpected[:2]}; wrong shapes: "
                f"{misshapen[:2]}); DINOv2 weights with Meta's key names are expected (cls_token, pos_embed, "
                f"patch_embed.proj.weight, blocks.0.attn.qkv.weight, ...)")
        self.body.load_state_dict(used, strict=True)
        log.info("loaded %d tensors from %s", len(used), path)
        if show:
            show_load(spec, path, "DINOv2 names", len(used), missing, unexpected)
        return missing, unexpected

    def _check_size(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """A file of another DINOv2 size names the backbone it is for."""
        if "cls_token" not in state:
            raise PretrainedError(f"'{path}': no 'cls_token'; is it a DINOv2 checkpoint? (Meta's "
                                  f"{self.spec.meta_file} or UniMatch V2's pretrained/{self.spec.unimatch_file})")
        dim = int(state["cls_token"].shape[-1])
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        if (dim, depth) == (self.embed_dim, len(self.body.blocks)):
            return
        fits = [n for n, s in VIT_SPECS.items() if (s.embed_dim, s.depth) == (dim, depth)]
        what = f"{VIT_SPECS[fits[0]].label} weights" if fits else f"a ViT of width {dim} and {depth} blocks"
        advice = f"set model.backbone={fits[0]}" if fits else f"choose among {', '.join(VIT_SPECS)}"
        raise PretrainedError(f"'{path}' holds {what}; model.backbone={self.name} is {self.spec.label} "
                              f"(width {self.embed_dim}, {len(self.body.blocks)} blocks): {advice}")
