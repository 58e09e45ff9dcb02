"""The DINO ViT backbones UniMatch V2's DPT head decodes: DINOv2 (patch 14) as UniMatch V2 builds
it, and DINOv3 (patch 16) as Meta releases it. Both have the feature interface of the other
backbones: ``forward(x) -> four (B, C, H/p, W/p) maps``, the normalised outputs of the blocks the
head decodes (S/B: 2, 5, 8, 11; L: 4, 11, 17, 23, UniMatch V2's for both families), with the class
token (and DINOv3's register tokens) dropped.

timm provides the blocks (LayerScale, MLP FFN, attention through
``F.scaled_dot_product_attention``, so flash / memory-efficient kernels on the GPU); this module
runs them itself (``DinoBackbone.forward``) for what the families need and for **activation
checkpointing** of each block (``model.activation_checkpointing``): the backward pass recomputes
a block's activations instead of keeping them (about a third more compute for the memory of one
block), what makes ViT-L at crop 518 with 4 + 4 images fit one 80 GB GPU.

Inputs whose sides are not multiples of the patch lose the remainder, as a stride-p patch
embedding does (the segmentor resizes its output back to the input size).

**DINOv2** (timm ``vit_{small,base,large}_patch14_dinov2``, ``DinoV2Backbone``):

- position embeddings are interpolated as DINOv2 does: bicubic with ``scale_factor =
  (grid + 0.1) / sqrt(N)`` (its ``interpolate_offset``, no antialias), in float32. timm resamples
  to the target size, which differs from DINOv2 by up to ~1e-2 away from 518 x 518, so that
  UniMatch V2's trained weights would not give its outputs at other sizes;
- weights: Meta's ``dinov2_vit{s,b,l}14_pretrain.pth`` and UniMatch V2's renamed copies
  (``pretrained/dinov2_{small,base,large}.pth``) have the same keys, which are timm's;
  ``mask_token`` (DINOv2's masked-image-modelling token) is not used. A whole UniMatch V2
  checkpoint (``model`` / ``model_ema`` with ``module.backbone.`` keys) gives its encoder.

**DINOv3** (timm 1.0.31's port ``vit_{small,base,large}_patch16_dinov3_qkvb``, ``DinoV3Backbone``):

- RoPE position encoding (periods ``100 ** (2k / (head_dim / 2))``, patch-centre coordinates
  scaled to [-1, 1] on each axis), no learned position embedding: any size runs without
  interpolation, and an ONNX export takes any height and width;
- 4 register tokens after the class token (Meta's ``storage_tokens``, timm's ``reg_token``);
- the ``_qkvb`` variants: q and v biases, the k bias fixed at 0 as Meta's ``bias_mask``
  (``mask_k_bias``) makes it. timm's variants without ``_qkvb`` have no q/v biases and its
  converter then drops Meta's silently (features off by ~0.4 with nonzero biases): not used here;
- **no RoPE coordinate jitter in training.** Meta's model rescales the coordinates in train mode
  by one log-uniform factor in [1/2, 2] per forward (``pos_embed_rope_rescale_coords=2``, a
  pretraining augmentation); timm's port has none. Fine-tuning here uses the coordinates of eval
  mode in training too: the EMA teacher that makes the pseudo-labels and the evaluation run in
  eval mode, so the student learns on exactly the positional code they see, as with DINOv2's
  fixed position embeddings in UniMatch V2 (the rest of the recipe is UniMatch V2's unchanged);
- weights: Meta's ``dinov3_vit{s16,b16,l16}_pretrain_lvd1689m-<hash>.pth`` (a state dict in Meta's
  names) go through timm's converter ``timm.models.eva.checkpoint_filter_fn`` after every key is
  accounted for (``meta_dinov3_keys``): required ones present, nothing unknown, each block's
  ``bias_mask`` masking exactly the key bias, and ``rope_embed.periods`` DINOv3's to bfloat16
  precision (the periods themselves are recomputed in float32, as timm and Hugging Face do;
  Meta's model would use the file's). timm's own cache (``model.pretrained: timm``) and
  fastforec's checkpoints and exports are in timm's names already.

A file of the other family or another size is refused naming the backbone it fits.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
import torch.nn.functional as F
from timm.models.eva import checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastforec.config import VIT_FAMILIES, VitFamily
from fastforec.models.backbones import PretrainedError, read_state_dict, resolve_pretrained, show_load

log = logging.getLogger(__name__)

DINOV2, DINOV3 = VIT_FAMILIES["dinov2_"], VIT_FAMILIES["dinov3_"]
HEAD_DIM = 64  # every DINOv2 and DINOv3 size has 64-wide attention heads; backbone_width scales it
MIN_HEAD_DIM = 8
SEGMENTOR_PREFIX = "backbone."  # UniMatch V2's DPT keeps the encoder under it
BLOCK_PREFIX = "blocks."
PATCH_WEIGHT = "patch_embed.proj.weight"
CLS_KEY = "cls_token"


@dataclass(frozen=True)
class VitSpec:
    """One DINO size and the DPT head UniMatch V2 puts on it (the same widths on both families)."""

    family: VitFamily
    timm_name: str
    label: str
    embed_dim: int
    depth: int
    heads: int
    layers: tuple[int, ...]  # the blocks whose outputs the head decodes
    dpt_features: int
    dpt_channels: tuple[int, int, int, int]
    meta_file: str  # the name Meta releases the weights under
    unimatch_file: str | None = None  # UniMatch V2's copy under pretrained/

    @property
    def title(self) -> str:
        return f"{self.family.name} {self.label}"


# The blocks UniMatch V2 decodes (its get_intermediate_layers indices): every 3rd of 12, every ~6th
# of 24. DINOv3's S/B/L have the same depths and keep them (nothing was measured to choose others).
LAYERS_12, LAYERS_24 = (2, 5, 8, 11), (4, 11, 17, 23)
VIT_SPECS: dict[str, VitSpec] = {
    "dinov2_vits14": VitSpec(DINOV2, "vit_small_patch14_dinov2", "ViT-S/14", 384, 12, 6, LAYERS_12, 64,
                             (48, 96, 192, 384), "dinov2_vits14_pretrain.pth", "dinov2_small.pth"),
    "dinov2_vitb14": VitSpec(DINOV2, "vit_base_patch14_dinov2", "ViT-B/14", 768, 12, 12, LAYERS_12, 128,
                             (96, 192, 384, 768), "dinov2_vitb14_pretrain.pth", "dinov2_base.pth"),
    "dinov2_vitl14": VitSpec(DINOV2, "vit_large_patch14_dinov2", "ViT-L/14", 1024, 24, 16, LAYERS_24, 256,
                             (256, 512, 1024, 1024), "dinov2_vitl14_pretrain.pth", "dinov2_large.pth"),
    # Meta's file names: dinov3/hub/backbones.py (LVD-1689M weights, the hash its loader expects)
    "dinov3_vits16": VitSpec(DINOV3, "vit_small_patch16_dinov3_qkvb", "ViT-S/16", 384, 12, 6, LAYERS_12, 64,
                             (48, 96, 192, 384), "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    "dinov3_vitb16": VitSpec(DINOV3, "vit_base_patch16_dinov3_qkvb", "ViT-B/16", 768, 12, 12, LAYERS_12, 128,
                             (96, 192, 384, 768), "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    "dinov3_vitl16": VitSpec(DINOV3, "vit_large_patch16_dinov3_qkvb", "ViT-L/16", 1024, 24, 16, LAYERS_24, 256,
                             (256, 512, 1024, 1024), "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
}


def scaled(value: int, width: float, multiple: int = 1) -> int:
    """``value * width``, at least MIN_HEAD_DIM, rounded to a multiple of ``multiple``."""
    return max(MIN_HEAD_DIM, round(value * width / multiple) * multiple)


def _depth(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(BLOCK_PREFIX)})


def weights_family(state: dict[str, torch.Tensor]) -> VitFamily | None:
    """The family a ViT state dict (Meta's or timm's names) belongs to, by its patch size."""
    if PATCH_WEIGHT not in state:
        return None
    patch = int(state[PATCH_WEIGHT].shape[-1])
    return next((f for f in VIT_FAMILIES.values() if f.patch == patch), None)


class DinoBackbone(nn.Module):
    """What both families share: the block loop, the size checks, the strict load. ``width``
    scales the embedding (heads of ``64 * width`` channels) for CPU-sized networks trained from
    scratch; 1.0 is the released one, the only width its weights fit."""

    family: ClassVar[VitFamily]
    layer_scale_init: ClassVar[float]
    head_dim_multiple: ClassVar[int] = 1
    fixed_onnx_size: ClassVar[bool] = False  # does an ONNX export fix the image size (export_format.write_onnx)?

    def __init__(self, *, name: str, width: float = 1.0, activation_checkpointing: bool = False):
        super().__init__()
        spec = VIT_SPECS.get(name)
        if spec is None or spec.family != self.family:
            names = [n for n, s in VIT_SPECS.items() if s.family == self.family]
            raise ValueError(f"backbone '{name}' is not a {self.family.name} ViT; choose one of {', '.join(names)}")
        self.name, self.spec, self.layers, self.patch = name, spec, spec.layers, spec.family.patch
        narrow = {} if width == 1.0 else {"embed_dim": spec.heads * scaled(HEAD_DIM, width, self.head_dim_multiple)}
        self.body = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                      init_values=self.layer_scale_init, **self._timm_kwargs(), **narrow)
        self.embed_dim = self.body.embed_dim
        self.num_prefix_tokens = self.body.num_prefix_tokens  # class (+ register) tokens before the patches
        self.activation_checkpointing = activation_checkpointing

    def _timm_kwargs(self) -> dict[str, Any]:
        return {}

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """(B, prefix + h * w, C) tokens entering the first block, and the blocks' keyword arguments."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the remainder of a side that is not a multiple of the patch is dropped, as a strided conv does
        p = self.patch
        x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
        b, h, w = x.shape[0], x.shape[-2] // p, x.shape[-1] // p
        t, block_kwargs = self._tokens(x)
        c = t.shape[-1]
        out = []
        last = self.layers[-1]
        for i, block in enumerate(self.body.blocks[: last + 1]):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                t = checkpoint(block, t, use_reentrant=False, **block_kwargs)
            else:
                t = block(t, **block_kwargs)
            if i in self.layers:
                out.append(self.body.norm(t)[:, self.num_prefix_tokens:].transpose(1, 2).reshape(b, c, h, w))
        return tuple(out)

    # -----------------------------------------------------------------------------------------
    # weights

    def load_pretrained(self, spec: str | Path, *, show: bool = True,
                        cache_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
        """Load weights (module doc) strictly; returns (missing, unexpected) (both empty, or it raises)."""
        path = resolve_pretrained(spec, self.spec.timm_name, cache_dir=cache_dir)
        state = read_state_dict(path)
        if not any(k.startswith(BLOCK_PREFIX) for k in state) and any(k.startswith(SEGMENTOR_PREFIX) for k in state):
            state = {k[len(SEGMENTOR_PREFIX):]: v for k, v in state.items() if k.startswith(SEGMENTOR_PREFIX)}
        self._check_size(state, path)
        used, naming = self._timm_names(state, path)
        own = self.body.state_dict()
        missing = sorted(set(own) - set(used))
        unexpected = sorted(set(used) - set(own))
        misshapen = [f"{k}: file {tuple(v.shape)}, backbone {tuple(own[k].shape)}" for k, v in used.items()
                     if k in own and v.shape != own[k].shape]
        if missing or unexpected or misshapen:
            raise PretrainedError(
                f"'{path}' does not fit {self.spec.title} ({len(missing)} tensors missing from the file, e.g. "
                f"{missing[:2]}; {len(unexpected)} not in the backbone, e.g. {unexpected[:2]}; wrong shapes: "
                f"{misshapen[:2]}); {self._expected_names()}")
        self.body.load_state_dict(used, strict=True)
        log.info("loaded %d tensors from %s (%s)", len(used), path, naming)
        if show:
            show_load(spec, path, naming, len(used), missing, unexpected)
        return missing, unexpected

    def _timm_names(self, state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
        """The file's tensors in timm's names, and how they were named."""
        raise NotImplementedError

    def _expected_names(self) -> str:
        raise NotImplementedError

    def _file_hint(self) -> str:
        s = self.spec
        return f"Meta's {s.meta_file}" + (f" or UniMatch V2's pretrained/{s.unimatch_file}" if s.unimatch_file else "")

    def _check_size(self, state: dict[str, torch.Tensor], path: Path) -> None:
        """A file of the other family or of another size names the backbone it is for."""
        if CLS_KEY not in state:
            raise PretrainedError(f"'{path}': no '{CLS_KEY}'; is it a {self.family.name} checkpoint? "
                                  f"({self._file_hint()})")
        family = weights_family(state)
        dim, depth = int(state[CLS_KEY].shape[-1]), _depth(state)
        if (family, dim, depth) == (self.family, self.embed_dim, len(self.body.blocks)):
            return
        fits = [n for n, s in VIT_SPECS.items() if (s.family, s.embed_dim, s.depth) == (family, dim, depth)]
        if fits:
            what = f"{VIT_SPECS[fits[0]].title} weights"
            advice = f"set model.backbone={fits[0]}"
        else:
            kind = f"a {family.name} ViT" if family else "a ViT of another patch size"
            what, advice = f"{kind} of width {dim} and {depth} blocks", f"choose among {', '.join(VIT_SPECS)}"
        if family != self.family:
            advice += f", or give {self.spec.title} weights ({self._file_hint()})"
        raise PretrainedError(f"'{path}' holds {what}; model.backbone={self.name} is {self.spec.title} "
                              f"(width {self.embed_dim}, {len(self.body.blocks)} blocks): {advice}")


# ---------------------------------------------------------------------------------------------
# DINOv2

IMG_SIZE = 518  # the size DINOv2's position embeddings were trained at: 37 x 37 patches
POS_OFFSET = 0.1  # DINOv2's interpolate_offset
DINOV2_UNUSED_KEYS = {"mask_token": "DINOv2's mask token (its self-supervised pretraining only)"}
REGISTER_KEY = "register_tokens"  # DINOv2 with registers (not what UniMatch V2 uses)


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


class DinoV2Backbone(DinoBackbone):
    family = DINOV2
    layer_scale_init = 1.0  # UniMatch V2 builds DINOv2 with init_values=1.0 (timm's default is 1e-5)
    fixed_onnx_size = True  # the interpolation's scale factors become constants of the traced graph

    def _timm_kwargs(self) -> dict[str, Any]:
        return {"img_size": IMG_SIZE}

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        tokens = self.body.patch_embed(x)  # (B, h, w, C): timm's dynamic size gives NHWC
        b, h, w, c = tokens.shape
        cls = self.body.cls_token.expand(b, -1, -1).to(tokens.dtype)
        t = torch.cat([cls, tokens.reshape(b, h * w, c)], dim=1)
        return t + interpolate_pos_embed(self.body.pos_embed, (h, w)).to(t.dtype), {}

    def _timm_names(self, state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
        if REGISTER_KEY in state:
            registers = state[REGISTER_KEY].shape[1]
            raise PretrainedError(f"'{path}' is DINOv2 with registers ({registers} register tokens); "
                                  f"UniMatch V2 uses DINOv2 without them: take dinov2_vit*14_pretrain.pth")
        return {k: v for k, v in state.items() if k not in DINOV2_UNUSED_KEYS}, "DINOv2 names"

    def _expected_names(self) -> str:
        return ("DINOv2 weights with Meta's key names are expected (cls_token, pos_embed, patch_embed.proj.weight, "
                "blocks.0.attn.qkv.weight, ...)")


# ---------------------------------------------------------------------------------------------
# DINOv3

STORAGE_KEY = "storage_tokens"  # Meta's name of the register tokens: marks a file in Meta's names
ROPE_PERIODS_KEY = "rope_embed.periods"
BIAS_MASK_SUFFIX = "attn.qkv.bias_mask"
# Meta's persistent tensors that are not weights of the network: checked (periods, bias masks) or unused
DINOV3_OPTIONAL_KEYS = {"mask_token": "DINOv3's mask token (its self-supervised pretraining only)",
                        ROPE_PERIODS_KEY: "RoPE periods (recomputed in float32; the file's are checked)"}
ROPE_PERIODS_RTOL = 2.0 ** -8  # Meta's files may hold the periods in bfloat16 (8 significant bits)
QKV = 3  # q, k, v thirds of attn.qkv; Meta's bias_mask is 1 on q and v, 0 on k
# Distinct patch grids whose RoPE tables are kept per device: training uses one crop, whole-image
# evaluation a handful of sizes; each table is (h * w, 2 * head_dim) floats.
ROPE_CACHE_GRIDS = 8


def meta_dinov3_keys(depth: int) -> set[str]:
    """The keys of Meta's DINOv3 ViT state dict (``DinoVisionTransformer`` with ``n_storage_tokens``,
    LayerScale, ``qkv_bias`` with ``mask_k_bias``, MLP FFN, one LayerNorm before the output), less
    DINOV3_OPTIONAL_KEYS."""
    keys = {CLS_KEY, STORAGE_KEY, "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", BIAS_MASK_SUFFIX, "attn.proj.weight",
             "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"]
    return keys | {f"{BLOCK_PREFIX}{i}.{k}" for i in range(depth) for k in block}


class DinoV3Backbone(DinoBackbone):
    family = DINOV3
    layer_scale_init = 1e-5  # Meta's layerscale_init for every released DINOv3 ViT
    head_dim_multiple = 4  # RoPE: two axes x (sin, cos) halves of each head

    def __init__(self, *, name: str, width: float = 1.0, activation_checkpointing: bool = False):
        super().__init__(name=name, width=width, activation_checkpointing=activation_checkpointing)
        # (grid, device) -> RoPE table, most recently used last; not state (deterministic, rebuilt at will)
        self._rope_tables: OrderedDict[tuple[tuple[int, int], torch.device], torch.Tensor] = OrderedDict()

    def _rope(self, grid: tuple[int, int]) -> torch.Tensor:
        """timm's RoPE table for a grid of patches, (h * w, 2 * head_dim) float32. timm builds its
        coordinates on the CPU; keeping the table per grid spares the copy to the device (a host
        synchronisation) in every forward. Export and compile trace the computation itself."""
        rope = self.body.rope
        if torch.compiler.is_compiling():
            return rope.get_embed(shape=list(grid))
        key = (grid, rope.periods.device)
        table = self._rope_tables.pop(key, None)
        if table is None:
            table = rope.get_embed(shape=list(grid))
        self._rope_tables[key] = table
        while len(self._rope_tables) > ROPE_CACHE_GRIDS:
            self._rope_tables.popitem(last=False)
        return table

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        tokens = self.body.patch_embed(x)  # (B, h, w, C)
        b, h, w, c = tokens.shape
        prefix = [p.expand(b, -1, -1).to(tokens.dtype) for p in (self.body.cls_token, self.body.reg_token)]
        return torch.cat([*prefix, tokens.reshape(b, h * w, c)], dim=1), {"rope": self._rope((h, w))}

    def _timm_names(self, state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
        if STORAGE_KEY not in state:  # timm's cache, a fastforec checkpoint or export: timm's names already
            return state, "timm names"
        depth = len(self.body.blocks)
        expected = meta_dinov3_keys(depth)
        missing = sorted(expected - set(state))
        unknown = sorted(set(state) - expected - set(DINOV3_OPTIONAL_KEYS))
        if missing or unknown:
            raise PretrainedError(
                f"'{path}' does not fit {self.spec.title} in Meta's names ({len(missing)} tensors missing from the "
                f"file, e.g. {missing[:2]}; {len(unknown)} unknown, e.g. {unknown[:2]}); "
                f"{self._expected_names()}")
        self._check_periods(state, path)
        self._check_bias_masks(state, path, depth)
        # timm's converter: Meta's names -> timm's (qkv bias split into q and v, the masked k part dropped)
        converted = checkpoint_filter_fn(state, self.body)
        return converted, ("Meta's DINOv3 names through timm's converter; not loaded: mask_token, the RoPE "
                           "periods (checked) and the key biases (zeroed by bias_mask)")

    def _check_periods(self, state: dict[str, torch.Tensor], path: Path) -> None:
        if ROPE_PERIODS_KEY not in state:
            return
        theirs, ours = state[ROPE_PERIODS_KEY].float(), self.body.rope.periods.float().cpu()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=ROPE_PERIODS_RTOL, atol=0.0):
            raise PretrainedError(
                f"'{path}': {ROPE_PERIODS_KEY} {theirs.tolist()[:4]}... are not DINOv3's RoPE periods for "
                f"{ours.numel() * 4}-wide heads ({ours.tolist()[:4]}..., base {self.body.rope.temperature:g}); "
                f"timm's DINOv3 would run another position encoding than the file was trained with")

    @staticmethod
    def _check_bias_masks(state: dict[str, torch.Tensor], path: Path, depth: int) -> None:
        for i in range(depth):
            key = f"{BLOCK_PREFIX}{i}.{BIAS_MASK_SUFFIX}"
            mask = state[key].float()
            want = torch.ones_like(mask)
            third = mask.numel() // QKV
            want[third: 2 * third] = 0.0
            if not torch.equal(mask, want):
                raise PretrainedError(f"'{path}': {key} is not 1 on the query and value biases and 0 on the key "
                                      f"biases (Meta's mask_k_bias); timm's DINOv3 fixes the key bias at 0 and "
                                      f"would compute something else than this file's network")

    def _expected_names(self) -> str:
        return (f"DINOv3 weights in Meta's names ({self.spec.meta_file}: cls_token, storage_tokens, "
                f"patch_embed.proj.weight, blocks.0.attn.qkv.bias_mask, blocks.0.ls1.gamma, ...) or in timm's "
                f"({self.spec.timm_name}) are expected")


FAMILY_BACKBONES: dict[str, type[DinoBackbone]] = {DINOV2.name: DinoV2Backbone, DINOV3.name: DinoV3Backbone}


def vit_backbone(*, name: str, width: float = 1.0, activation_checkpointing: bool = False) -> DinoBackbone:
    """The backbone class of ``name``'s family."""
    if name not in VIT_SPECS:
        raise ValueError(f"backbone '{name}' is not a DINO ViT; choose one of {', '.join(VIT_SPECS)}")
    cls = FAMILY_BACKBONES[VIT_SPECS[name].family.name]
    return cls(name=name, width=width, activation_checkpointing=activation_checkpointing)
