"""UniMatch V2's network re-stated as plain functional code over a state dict in its own names
(LiheYoung/UniMatch-V2 model/backbone/dinov2.py, model/semseg/dpt.py, model/util/blocks.py; facts
only): DINOv2 with LayerScale and position embeddings interpolated with scale_factor (grid + 0.1)
/ sqrt(N), bicubic; the DPT head; every resize bilinear with align_corners=True. And its state
dict layout per size, from the documented widths, to build random checkpoints from."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PATCH = 14
EPS = 1e-6  # DINOv2's LayerNorm
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# size -> (embed dim, depth, heads, blocks decoded, DPT features, DPT out_channels)
SIZES = {
    "small": (384, 12, 6, [2, 5, 8, 11], 64, [48, 96, 192, 384]),
    "base": (768, 12, 12, [2, 5, 8, 11], 128, [96, 192, 384, 768]),
    "large": (1024, 24, 16, [4, 11, 17, 23], 256, [256, 512, 1024, 1024]),
}
GRID = 37  # 518 / 14


def backbone_shapes(dim: int, depth: int) -> dict[str, tuple[int, ...]]:
    """DINOv2's keys and shapes (Meta's dinov2_vit*14_pretrain.pth, UniMatch V2's pretrained/*.pth)."""
    s = {"cls_token": (1, 1, dim), "pos_embed": (1, GRID * GRID + 1, dim), "mask_token": (1, dim),
         "patch_embed.proj.weight": (dim, 3, PATCH, PATCH), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        s.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,), p + "attn.qkv.weight": (3 * dim, dim),
                  p + "attn.qkv.bias": (3 * dim,), p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                  p + "ls1.gamma": (dim,), p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                  p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                  p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,), p + "ls2.gamma": (dim,)})
    s.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return s


def head_shapes(dim: int, features: int, out: list[int], nclass: int) -> dict[str, tuple[int, ...]]:
    """UniMatch V2's DPTHead keys and shapes."""
    s: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(out):
        s[f"projects.{i}.weight"], s[f"projects.{i}.bias"] = (c, dim, 1, 1), (c,)
    # ConvTranspose2d weights are (in, out, k, k)
    for i, k in ((0, 4), (1, 2), (3, 3)):
        s[f"resize_layers.{i}.weight"], s[f"resize_layers.{i}.bias"] = (out[i], out[i], k, k), (out[i],)
    for i, c in enumerate(out, start=1):
        s[f"scratch.layer{i}_rn.weight"] = (features, c, 3, 3)
    for i in range(1, 5):
        p = f"scratch.refinenet{i}."
        s[p + "out_conv.weight"], s[p + "out_conv.bias"] = (features, features, 1, 1), (features,)
        for unit in (1, 2):
            for conv in (1, 2):
                q = f"{p}resConfUnit{unit}.conv{conv}."
                s[q + "weight"], s[q + "bias"] = (features, features, 3, 3), (features,)
    s["scratch.output_conv.0.weight"], s["scratch.output_conv.0.bias"] = (features, features, 3, 3), (features,)
    s["scratch.output_conv.2.weight"], s["scratch.output_conv.2.bias"] = (nclass, features, 1, 1), (nclass,)
    return s


def model_shapes(size: str, nclass: int) -> dict[str, tuple[int, ...]]:
    dim, depth, _, _, features, out = SIZES[size]
    return {**{f"backbone.{k}": v for k, v in backbone_shapes(dim, depth).items()},
            **{f"head.{k}": v for k, v in head_shapes(dim, features, out, nclass).items()}}


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Weights with activations of a sane scale: LayerNorm weights near 1, LayerScale small."""
    state = {}
    for k, shape in shapes.items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm.weight"):
            state[k] = 1.0 + 0.1 * torch.randn(shape)
        elif k.endswith("gamma"):
            state[k] = 0.1 + 0.05 * torch.rand(shape)
        elif k.endswith("weight") and len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if "resize_layers.0" not in k and "resize_layers.1" not in k else shape[0]
            state[k] = torch.randn(shape) / math.sqrt(fan_in)
        else:
            state[k] = 0.1 * torch.randn(shape)
    return state


# ---------------------------------------------------------------------------------------------
# the forward pass


def pos_embed(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n = pos.shape[1] - 1
    if n == h * w and h == w:
        return pos
    side = math.sqrt(n)
    grid = pos[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic", antialias=False)
    assert grid.shape[-2:] == (h, w)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


def _block(s: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    y = F.layer_norm(x, (c,), s[p + "norm1.weight"], s[p + "norm1.bias"], EPS)
    qkv = F.linear(y, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) / math.sqrt(c // heads)).softmax(-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + s[p + "ls1.gamma"] * F.linear(y, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
    y = F.layer_norm(x, (c,), s[p + "norm2.weight"], s[p + "norm2.bias"], EPS)
    y = F.linear(F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])), s[p + "mlp.fc2.weight"],
                 s[p + "mlp.fc2.bias"])
    return x + s[p + "ls2.gamma"] * y


def intermediate_layers(s: dict, x: torch.Tensor, layers: list[int], heads: int) -> list[torch.Tensor]:
    """DINOv2's get_intermediate_layers(x, layers) (normalised, class token dropped): (B, N, C) each."""
    h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    t = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = torch.cat([s["cls_token"].expand(t.shape[0], -1, -1), t], dim=1) + pos_embed(s["pos_embed"], h, w)
    out = []
    for i in range(max(layers) + 1):
        t = _block(s, f"blocks.{i}.", t, heads)
        if i in layers:
            c = t.shape[-1]
            out.append(F.layer_norm(t, (c,), s["norm.weight"], s["norm.bias"], EPS)[:, 1:])
    return out


def _unit(s: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    y = F.conv2d(F.relu(x), s[p + "conv1.weight"], s[p + "conv1.bias"], padding=1)
    return F.conv2d(F.relu(y), s[p + "conv2.weight"], s[p + "conv2.bias"], padding=1) + x


def _fusion(s: dict, p: str, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
    if skip is not None:
        x = x + _unit(s, p + "resConfUnit1.", skip)
    x = _unit(s, p + "resConfUnit2.", x)
    x = F.interpolate(x, **({"scale_factor": 2} if size is None else {"size": size}), mode="bilinear",
                      align_corners=True)
    return F.conv2d(x, s[p + "out_conv.weight"], s[p + "out_conv.bias"])


def head(s: dict, feats: list[torch.Tensor], ph: int, pw: int) -> torch.Tensor:
    maps = []
    for i, f in enumerate(feats):
        x = f.permute(0, 2, 1).reshape(f.shape[0], f.shape[-1], ph, pw)
        x = F.conv2d(x, s[f"projects.{i}.weight"], s[f"projects.{i}.bias"])
        if i == 0:
            x = F.conv_transpose2d(x, s["resize_layers.0.weight"], s["resize_layers.0.bias"], stride=4)
        elif i == 1:
            x = F.conv_transpose2d(x, s["resize_layers.1.weight"], s["resize_layers.1.bias"], stride=2)
        elif i == 3:
            x = F.conv2d(x, s["resize_layers.3.weight"], s["resize_layers.3.bias"], stride=2, padding=1)
        maps.append(F.conv2d(x, s[f"scratch.layer{i + 1}_rn.weight"], padding=1))
    l1, l2, l3, l4 = maps
    p = _fusion(s, "scratch.refinenet4.", l4, None, l3.shape[2:])
    p = _fusion(s, "scratch.refinenet3.", p, l3, l2.shape[2:])
    p = _fusion(s, "scratch.refinenet2.", p, l2, l1.shape[2:])
    p = _fusion(s, "scratch.refinenet1.", p, l1, None)
    p = F.relu(F.conv2d(p, s["scratch.output_conv.0.weight"], s["scratch.output_conv.0.bias"], padding=1))
    return F.conv2d(p, s["scratch.output_conv.2.weight"], s["scratch.output_conv.2.bias"])


def split(state: dict) -> tuple[dict, dict]:
    bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    hd = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    return bb, hd


def dpt_logits(state: dict, x: torch.Tensor, *, layers: list[int], heads: int,
               channel_mask: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
    """UniMatch V2's DPT.forward on an image in [0, 1] (normalised here, as its dataset does);
    ``channel_mask`` (B, C) multiplies the features as its comp_drop does. The output is resized
    to ``size``, by default UniMatch V2's (patch grid x 14)."""
    bb, hd = split(state)
    x = (x - MEAN) / STD
    ph, pw = x.shape[-2] // PATCH, x.shape[-1] // PATCH
    feats = intermediate_layers(bb, x, layers, heads)
    if channel_mask is not None:
        feats = [f * channel_mask.unsqueeze(1) for f in feats]
    out = head(hd, feats, ph, pw)
    return F.interpolate(out, size or (ph * PATCH, pw * PATCH), mode="bilinear", align_corners=True)


def evaluate_original(state: dict, image: torch.Tensor, *, layers: list[int], heads: int) -> torch.Tensor:
    """UniMatch V2's evaluate(mode='original', multiplier=14) prediction for one image."""
    h, w = image.shape[-2:]
    nh, nw = int(h / 14 + 0.5) * 14, int(w / 14 + 0.5) * 14
    x = F.interpolate(image, (nh, nw), mode="bilinear", align_corners=True)
    pred = dpt_logits(state, x, layers=layers, heads=heads)
    return F.interpolate(pred, (h, w), mode="bilinear", align_corners=True).argmax(1)
