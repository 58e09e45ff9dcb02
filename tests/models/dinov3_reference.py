"""Meta's DINOv3 ViT re-stated as plain functional code over a state dict in Meta's own names
(facebookresearch/dinov3 ``dinov3/models/vision_transformer.py``, ``dinov3/layers``,
``dinov3/hub/backbones.py``; facts only), in eval mode, and the layout of its weight files per
size, to build random ones from.

The facts: patch 16; the class token, then ``storage_tokens`` (4 registers), then the patches;
RoPE on the patch tokens of q and k (not on the 5 prefix tokens), with per-axis coordinates
``(i + 0.5) / n`` mapped to [-1, 1] ("separate" normalisation), angles ``2 pi c / periods`` for
the periods stored in ``rope_embed.periods`` (one per 4 head channels; the y angles, then the x
angles, the whole tiled twice) applied as ``x cos + rotate_half(x) sin`` with ``rotate_half(x) =
[-x2, x1]``; ``attn.qkv`` whose bias is multiplied by ``bias_mask`` (0 on the key third);
LayerScale ``ls1.gamma`` / ``ls2.gamma``; GELU MLP; LayerNorm eps 1e-5 (``layernormbf16``);
``get_intermediate_layers(n=layers, norm=True)`` applies ``norm`` to every token and drops the
class and register tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PATCH = 16
EPS = 1e-5
REGISTERS = 4
ROPE_BASE = 100.0
# size -> (embed dim, depth, heads, blocks UniMatch V2 decodes)
SIZES = {"small": (384, 12, 6, [2, 5, 8, 11]), "base": (768, 12, 12, [2, 5, 8, 11]),
         "large": (1024, 24, 16, [4, 11, 17, 23])}


def periods(head_dim: int, base: float = ROPE_BASE) -> torch.Tensor:
    """Meta's RopePositionEmbedding periods for ``base``: base ** (2 k / (head_dim / 2)), k < head_dim / 4."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def meta_shapes(dim: int, depth: int, heads: int) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of Meta's dinov3_vit*16_pretrain_*.pth."""
    s = {"cls_token": (1, 1, dim), "storage_tokens": (1, REGISTERS, dim), "mask_token": (1, dim),
         "patch_embed.proj.weight": (dim, 3, PATCH, PATCH), "patch_embed.proj.bias": (dim,),
         "rope_embed.periods": (dim // heads // 4,)}
    for i in range(depth):
        p = f"blocks.{i}."
        s.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "attn.qkv.weight": (3 * dim, dim),
                  p + "attn.qkv.bias": (3 * dim,), p + "attn.qkv.bias_mask": (3 * dim,),
                  p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,), p + "ls1.gamma": (dim,),
                  p + "norm2.weight": (dim,), p + "norm2.bias": (dim,), p + "mlp.fc1.weight": (4 * dim, dim),
                  p + "mlp.fc1.bias": (4 * dim,), p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,),
                  p + "ls2.gamma": (dim,)})
    s.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return s


def random_meta_state(dim: int, depth: int, heads: int, *, seed: int) -> dict[str, torch.Tensor]:
    """A weight file in Meta's names: random weights of a sane scale, nonzero q, k and v biases (the
    key bias is masked: a loader that used it would show), the masks and periods Meta's code makes."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in meta_shapes(dim, depth, heads).items():
        if k.endswith("bias_mask"):
            mask = torch.ones(shape)
            mask[dim: 2 * dim] = 0.0
            state[k] = mask
        elif k == "rope_embed.periods":
            state[k] = periods(dim // heads)
        elif k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[k] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif k.endswith("gamma"):
            state[k] = 0.1 + 0.05 * torch.rand(shape, generator=gen)
        elif k.endswith("weight") and len(shape) >= 2:
            state[k] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:
            state[k] = 0.1 * torch.randn(shape, generator=gen)
    return state


def _rope(s: dict, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (h * w, head_dim)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)
    angles = (2 * math.pi * coords[:, :, None] / s["rope_embed.periods"].float()[None, None, :]).flatten(1)
    angles = angles.tile(2)
    return angles.sin(), angles.cos()


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _block(s: dict, p: str, x: torch.Tensor, heads: int, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    prefix = 1 + REGISTERS
    y = F.layer_norm(x, (c,), s[p + "norm1.weight"], s[p + "norm1.bias"], EPS)
    bias = s[p + "attn.qkv.bias"] * s[p + "attn.qkv.bias_mask"]
    q, k, v = F.linear(y, s[p + "attn.qkv.weight"], bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q = torch.cat([q[:, :, :prefix], _rotate(q[:, :, prefix:], sin, cos)], dim=2)
    k = torch.cat([k[:, :, :prefix], _rotate(k[:, :, prefix:], sin, cos)], dim=2)
    attn = (q @ k.transpose(-2, -1) / math.sqrt(c // heads)).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + s[p + "ls1.gamma"] * F.linear(y, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    y = F.layer_norm(x, (c,), s[p + "norm2.weight"], s[p + "norm2.bias"], EPS)
    y = F.linear(F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"],
                 s[p + "mlp.fc2.bias"])
    return x + s[p + "ls2.gamma"] * y


def intermediate_layers(s: dict, x: torch.Tensor, layers: list[int], heads: int) -> list[torch.Tensor]:
    """Meta's get_intermediate_layers(x, n=layers, reshape=True, norm=True): (B, C, h, w) each
    (sides are multiples of 16)."""
    b, h, w = x.shape[0], x.shape[-2] // PATCH, x.shape[-1] // PATCH
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = torch.cat([s["cls_token"].expand(b, -1, -1), s["storage_tokens"].expand(b, -1, -1), t], dim=1)
    sin, cos = _rope(s, h, w)
    out = []
    for i in range(max(layers) + 1):
        t = _block(s, f"blocks.{i}.", t, heads, sin, cos)
        if i in layers:
            c = t.shape[-1]
            y = F.layer_norm(t, (c,), s["norm.weight"], s["norm.bias"], EPS)[:, 1 + REGISTERS:]
            out.append(y.transpose(1, 2).reshape(b, c, h, w))
    return out
