"""Trained checkpoints of the peers' code (UniMatch, U2PL), loaded exactly by name and shape.

This is the end-to-end check no synthetic test gives: a published checkpoint, evaluated through
fastforec's model, weight mapping and evaluation with the source's protocol, must give the
source's published number.

What the sources save (read from their code):

- UniMatch (LiheYoung/UniMatch): ``torch.save({'model': ddp_model.state_dict(), 'optimizer': ...,
  'epoch': ..., 'previous_best': ...})``, keys prefixed ``module.`` (DDP); its first release saved
  the bare ``model.module.state_dict()``. Network: ``backbone.*`` (its deep-stem ResNet: timm
  ``resnet101s`` / ``resnet50s`` names), ``head.b0``..``b4`` (ASPP; ``b4.gap.1`` / ``.2`` the
  pooling conv and BN), ``head.project``, ``reduce``, ``fuse``, ``classifier``.
- U2PL (Haochen-Wang409/U2PL): ``{'model_state': ..., 'teacher_state': ..., ...}``, ``module.``
  prefixes. Network: ``encoder.*`` (deep-stem ResNet), ``decoder.low_conv``, ``decoder.aspp.conv1``
  (pooling: ``.1`` conv, ``.2`` BN) .. ``conv5``, ``decoder.head``, ``decoder.classifier.0``..``8``;
  its contrastive ``decoder.representation`` and deep-supervision ``auxor`` heads serve training
  only and are listed as unused, never silently dropped.
- UniMatch V2 (LiheYoung/UniMatch-V2): ``{'model': ..., 'model_ema': ..., 'optimizer': ..., ...}``
  with ``module.`` prefixes; its published numbers are the EMA model's (here: the teacher, the
  default). Network: ``backbone.*`` (DINOv2, timm's names; ``mask_token`` unused), ``head.*``
  (the DPT head, models/dpt.py, names kept).

Every tensor of the network must come from the file with the shape the model has, and every
tensor of the file must be used or listed with the reason it is not: otherwise the load is
refused with the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.table import Table

from fastforec.checkpoint_files import CheckpointError, safe_load, torch_load
from fastforec.checkpoint_spec import PEER_SOURCES, PeerSource, split_spec
from fastforec.config import DINOV2, Config, ConfigError
from fastforec.models.backbones import BACKBONE_LAYOUTS, Layout, layout_of
from fastforec.models.vit import VIT_SPECS

DDP_PREFIX = "module."
# Which entry of the saved dict holds which weights; the first is the default. U2PL reports its
# EMA teacher's score, UniMatch trains no teacher.
CONTAINERS: dict[str, dict[str, str]] = {
    "unimatch": {"student": "model"},
    "u2pl": {"teacher": "teacher_state", "student": "model_state"},
    "unimatch_v2": {"teacher": "model_ema", "student": "model"},
}
# A key that tells the source apart from the other (after DDP prefixes are removed).
SIGNATURES = {"unimatch": "head.b0.0.weight", "u2pl": "decoder.low_conv.0.weight",
              "unimatch_v2": "head.scratch.output_conv.2.weight"}
# The decoder that builds each source's network (models/deeplab.py, models/dpt.py).
DECODER_OF = {"unimatch": "unimatch", "u2pl": "u2pl", "unimatch_v2": "dpt"}
SOURCE_NAMES = {"unimatch": "UniMatch (LiheYoung/UniMatch)", "u2pl": "U2PL (Haochen-Wang409/U2PL)",
                "unimatch_v2": "UniMatch V2 (LiheYoung/UniMatch-V2)"}
# The segmentation classifier in fastforec names (its output channels are the classes).
DEEPLAB_CLASSIFIER = "seg_head.classifier.weight"
CLASSIFIER_KEY = {"unimatch": DEEPLAB_CLASSIFIER, "u2pl": DEEPLAB_CLASSIFIER,
                  "unimatch_v2": "seg_head.scratch.output_conv.2.weight"}
ENCODER_PREFIX = "backbone.body."

Rename = Callable[[re.Match[str]], str]
# (pattern on the source's key, fastforec key). Sequential indices map one to one except where a
# function shifts them.
RULES: dict[str, list[tuple[str, str | Rename]]] = {
    "unimatch": [
        (r"backbone\.(.+)", r"backbone.body.\1"),
        (r"head\.b([0-3])\.(.+)", r"seg_head.aspp.branches.\1.\2"),
        (r"head\.b4\.gap\.([12])\.(.+)", lambda m: f"seg_head.aspp.branches.4.conv.{int(m[1]) - 1}.{m[2]}"),
        (r"head\.project\.(.+)", r"seg_head.aspp.project.\1"),
        (r"(reduce|fuse|classifier)\.(.+)", r"seg_head.\1.\2"),
    ],
    "u2pl": [
        (r"encoder\.(.+)", r"backbone.body.\1"),
        (r"decoder\.aspp\.conv1\.([12])\.(.+)", lambda m: f"seg_head.aspp.branches.0.conv.{int(m[1]) - 1}.{m[2]}"),
        (r"decoder\.aspp\.conv([2-5])\.(.+)", lambda m: f"seg_head.aspp.branches.{int(m[1]) - 1}.{m[2]}"),
        (r"decoder\.head\.(.+)", r"seg_head.aspp.project.\1"),
        (r"decoder\.low_conv\.(.+)", r"seg_head.reduce.\1"),
        (r"decoder\.classifier\.([0-7])\.(.+)", r"seg_head.fuse.\1.\2"),
        (r"decoder\.classifier\.8\.(.+)", r"seg_head.classifier.\1"),
    ],
    "unimatch_v2": [
        (r"backbone\.(.+)", r"backbone.body.\1"),
        (r"head\.(.+)", r"seg_head.\1"),
    ],
}
# Tensors of the file the segmentation network has no use for, with the reason.
UNUSED: dict[str, list[tuple[str, str]]] = {
    "unimatch": [],
    "u2pl": [(r"decoder\.representation\.", "U2PL's contrastive representation head (a training loss only)"),
             (r"auxor\.", "U2PL's deep-supervision head on layer3 (a training loss only)")],
    "unimatch_v2": [(r"backbone\.mask_token$", "DINOv2's mask token (its self-supervised pretraining only)")],
}


@dataclass
class PeerWeights:
    """A peer's checkpoint in fastforec names, and what happened to each of its tensors."""

    source: PeerSource
    path: Path
    weights: str  # student / teacher: which saved network
    state: dict[str, torch.Tensor]  # fastforec names
    unused: dict[str, str] = field(default_factory=dict)  # source key -> why it is not loaded
    unmapped: list[str] = field(default_factory=list)  # source keys no rule knows

    @property
    def backbone(self) -> str:
        """The backbone whose layout the file's encoder has (a config name)."""
        encoder = {k[len(ENCODER_PREFIX):]: v for k, v in self.state.items() if k.startswith(ENCODER_PREFIX)}
        if self.source == "unimatch_v2":
            return self._vit(encoder)
        layout = layout_of(encoder)
        fits = [n for n in BACKBONE_LAYOUTS if layout is not None and Layout(*BACKBONE_LAYOUTS[n]) == layout]
        if not fits:
            what = layout.describe() if layout else "no complete ResNet"
            raise CheckpointError(f"'{self.path}': its encoder is {what}, which no model.backbone here builds")
        return fits[0]

    def _vit(self, encoder: dict[str, torch.Tensor]) -> str:
        dim = int(encoder["cls_token"].shape[-1]) if "cls_token" in encoder else None
        depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
        # UniMatch V2 trains DINOv2 only (DINOv3's ViT-S/B/L have the same widths and depths)
        dinov2 = {n: s for n, s in VIT_SPECS.items() if s.family == DINOV2}
        fits = [n for n, s in dinov2.items() if (s.embed_dim, s.depth) == (dim, depth)]
        if not fits:
            raise CheckpointError(f"'{self.path}': its encoder is a ViT of width {dim} and {depth} blocks, which no "
                                  f"DINOv2 model.backbone here builds ({', '.join(dinov2)})")
        return fits[0]

    @property
    def num_classes(self) -> int:
        return int(self.state[CLASSIFIER_KEY[self.source]].shape[0])

    @property
    def decoder_channels(self) -> int:
        return int(self.state[CLASSIFIER_KEY[self.source]].shape[1])


def _strip_ddp(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def detect_source(raw: dict[str, Any]) -> PeerSource | None:
    """The source whose network the file holds, from its keys (None: not a peer's checkpoint)."""
    candidates = [raw] + [v for v in raw.values() if isinstance(v, dict)]
    for cand in candidates:
        keys = set(_strip_ddp(cand)) if isinstance(cand, dict) else set()
        for source, key in SIGNATURES.items():
            if key in keys:
                return source  # type: ignore[return-value]
    return None


def read_raw(path: Path) -> dict[str, Any]:
    raw = safe_load(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' is not a checkpoint (top level is {type(raw).__name__})")
    return raw


def select_weights(raw: dict[str, Any], source: PeerSource, path: Path, weights: str | None) -> tuple[str, dict]:
    """(which weights, their state dict) from a source's saved dict (or a bare state dict)."""
    containers = CONTAINERS[source]
    if _is_tensor_dict(raw):  # a bare state dict: one network, whatever it was
        if weights not in (None, next(iter(containers))):
            raise CheckpointError(f"'{path}' holds one network (a bare state dict); drop --weights {weights}")
        return next(iter(containers)), raw
    weights = weights or next(iter(containers))
    if weights not in containers:
        raise CheckpointError(f"'{path}': {SOURCE_NAMES[source]} saves no {weights} weights (it saves "
                              f"{', '.join(containers)}); use --weights {next(iter(containers))}")
    key = containers[weights]
    if not _is_tensor_dict(raw.get(key)):
        raise CheckpointError(f"'{path}' has no '{key}' state dict, where {SOURCE_NAMES[source]} saves its "
                              f"{weights} weights (top-level keys: {', '.join(map(str, raw)) or 'none'})")
    return weights, raw[key]


def to_fastforec(state: dict[str, torch.Tensor], source: PeerSource) -> tuple[dict[str, torch.Tensor],
                                                                                dict[str, str], list[str]]:
    """(fastforec-named tensors, unused source keys with reasons, source keys no rule maps)."""
    mapped: dict[str, torch.Tensor] = {}
    unused: dict[str, str] = {}
    unmapped: list[str] = []
    for key, value in _strip_ddp(state).items():
        reason = next((why for pattern, why in UNUSED[source] if re.match(pattern, key)), None)
        if reason is not None:
            unused[key] = reason
            continue
        for pattern, target in RULES[source]:
            m = re.fullmatch(pattern, key)
            if m:
                mapped[target(m) if callable(target) else m.expand(target)] = value
                break
        else:
            unmapped.append(key)
    return mapped, unused, unmapped


def read_peer_checkpoint(spec: str | Path, *, weights: str | None = None) -> PeerWeights:
    """A peer's checkpoint (``source:path``, or a path whose keys name the source)."""
    named, path = split_spec(spec)
    raw = read_raw(path)
    found = detect_source(raw)
    source = named or found
    if source is None:
        raise CheckpointError(f"'{path}' is neither a fastforec checkpoint nor one of {', '.join(PEER_SOURCES)} "
                              f"(no key such as {', '.join(SIGNATURES.values())})")
    if named is not None and found is not None and found != named:
        raise CheckpointError(f"'{path}' holds a {SOURCE_NAMES[found]} network, not {SOURCE_NAMES[named]}; "
                              f"write --checkpoint {found}:{path}")
    chosen, state = select_weights(raw, source, path, weights)
    mapped, unused, unmapped = to_fastforec(state, source)
    if CLASSIFIER_KEY[source] not in mapped:
        raise CheckpointError(f"'{path}': no segmentation classifier in the {chosen} weights; is it a "
                              f"{SOURCE_NAMES[source]} checkpoint?")
    return PeerWeights(source=source, path=path, weights=chosen, state=mapped, unused=unused, unmapped=unmapped)


def is_peer_checkpoint(spec: str | Path) -> bool:
    """Whether ``spec`` names a peer's checkpoint: by its ``source:`` prefix, or by the keys of a
    file that is not a fastforec checkpoint."""
    named, path = split_spec(spec)
    if named is not None:
        return True
    if not path.is_file() or path.suffix == ".safetensors":
        return False
    try:  # memory-mapped: only the key structure is read, not a gigabyte of weights
        raw = torch_load(path, mmap=True)
    except Exception:  # noqa: BLE001 - the fastforec reader says what is wrong with it
        return False
    return isinstance(raw, dict) and "format" not in raw and detect_source(raw) is not None


def peer_config(cfg: Config, peer: PeerWeights) -> Config:
    """The config with the network the file holds: the source's decoder, the backbone of the
    file's layout, its decoder width (output stride and everything else stay the recipe's)."""
    cfg.model.decoder = DECODER_OF[peer.source]  # type: ignore[assignment]
    cfg.model.backbone = peer.backbone  # type: ignore[assignment]
    if not cfg.model.is_vit:  # DPT's widths follow the ViT size
        cfg.model.decoder_channels = peer.decoder_channels
    cfg.model.backbone_width = 1.0
    cfg.model.pretrained = None  # every weight comes from the checkpoint
    if peer.source == "unimatch_v2":  # its evaluate(..., multiplier=14) and sliding window, whatever the recipe
        cfg.eval.size_multiple = DINOV2.patch
        cfg.eval.sliding_protocol = "unimatch_v2"
    try:
        cfg.validate()
    except ConfigError as e:
        source = SOURCE_NAMES[peer.source]
        raise ConfigError(f"{e} (the config given with the {source} checkpoint '{peer.path}')") from None
    return cfg


def load_into(model: torch.nn.Module, peer: PeerWeights) -> Table:
    """Load ``peer`` strictly into ``model``; returns the table of what was loaded. Refuses (with
    the table's content) any missing, unexpected or misshapen tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(peer.state))
    unexpected = sorted(set(peer.state) - set(own)) + [f"{k} (no rule maps it)" for k in peer.unmapped]
    misshapen = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in peer.state.items()
                 if k in own and v.shape != own[k].shape]
    table = Table(title=f"{peer.path} ({SOURCE_NAMES[peer.source]}, {peer.weights} weights)")
    for column in ("tensors loaded", "missing", "unexpected", "wrong shape", "not used"):
        table.add_column(column, justify="right")
    table.add_row(str(len(peer.state) - len(misshapen) - len(set(peer.state) - set(own))), str(len(missing)),
                  str(len(unexpected)), str(len(misshapen)), str(len(peer.unused)))
    reasons = sorted(set(peer.unused.values()))
    if reasons:
        table.caption = "not used: " + "; ".join(f"{sum(r == v for v in peer.unused.values())} tensors of {r}"
                                                 for r in reasons)
    if missing or unexpected or misshapen:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", misshapen)) if keys)
        raise CheckpointError(f"'{peer.path}' does not fit {SOURCE_NAMES[peer.source]}'s network as configured "
                              f"({len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} of the "
                              f"wrong shape; {detail}); check model.output_stride and the dataset's classes")
    model.load_state_dict(peer.state, strict=True)
    return table
