"""ResNet backbones with a uniform feature interface: ``forward(x) -> (c1, c4)``, and the loading
of the ImageNet weight files users already have.

c1 is the stride-4 map (the low-level skip of DeepLabV3+), c4 the last stage at the output
stride (8 or 16, by dilating the last stages instead of striding). timm provides the networks.

Weight files, all loaded by parameter name with every stem and stage tensor required:

- torchvision / timm ResNets (``conv1.weight`` 7x7 stem, ``layer1``..``layer4``): timm's ResNets
  share torchvision's names.
- the deep-stem ResNet-101 that U2PL and UniMatch distribute (``pretrained/resnet101.pth``): a
  64-64-128 stem ``conv1.0/.1/.3/.4/.6`` + ``bn1``: timm's ``resnet101s`` has exactly these names.
- mmseg's ResNetV1c checkpoints: a 32-32-64 stem named ``stem.0/.1/.3/.4/.6/.7``, renamed here to
  timm's ``resnet101c`` (``conv1.0/.1/.3/.4/.6`` + ``bn1``); a ``backbone.`` prefix is dropped.
- timm's own weights by model name (``model.pretrained: "timm"`` or ``"timm:resnet101s.gluon_in1k"``),
  from the local Hugging Face / torch hub cache only: nothing is downloaded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file
from torch import nn

from fastforec.checkpoint_files import first_line, refusal, torch_load
from fastforec.config import BACKBONES, BackboneName  # noqa: F401 (re-exported)
from fastforec.errors import UserError

log = logging.getLogger(__name__)

# The names are config.BACKBONES. resnet101c: timm's deep-stem ResNet-101 with a 32-32-64 stem
# (mmseg's ResNetV1c); resnet101s: the 64-64-128 deep stem of the ResNet-101 weights U2PL and UniMatch use.
LOW_LEVEL_STAGE, LAST_STAGE = 1, 4
NUM_STAGES = 4
STAGE_CHANNELS = (64, 128, 256, 512)  # the residual stages' widths at width 1.0 (x4 in bottlenecks)
RESIDUAL_STAGE_PREFIX = "layer"  # torchvision/timm name of the residual stages: layer1..layer4
BN_COUNTER = "num_batches_tracked"
FASTFOREC_ENCODER_PREFIX = "backbone.body."  # where a fastforec checkpoint keeps the encoder
CLASSIFIER_PREFIX = "fc."  # the ImageNet classifier of a weight file: never used, never reported

# Timm's model name -> its module layout: (stem output channels, blocks per stage, bottleneck).
# The 7x7 stem is one conv of 64 channels; deep stems are three 3x3 convs.
STEM_7X7 = (64,)
STEM_V1C = (32, 32, 64)
STEM_V1S = (64, 64, 128)
BACKBONE_LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool]] = {
    "resnet18": (STEM_7X7, (2, 2, 2, 2), False),
    "resnet50": (STEM_7X7, (3, 4, 6, 3), True),
    "resnet50s": (STEM_V1S, (3, 4, 6, 3), True),  # UniMatch's ResNet-50: the same deep stem as its ResNet-101
    "resnet101": (STEM_7X7, (3, 4, 23, 3), True),
    "resnet101c": (STEM_V1C, (3, 4, 23, 3), True),
    "resnet101s": (STEM_V1S, (3, 4, 23, 3), True),
}
DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101}
STEM_NAMES = {
    STEM_7X7: "the 7x7 stem of torchvision and timm",
    STEM_V1C: "the 32-32-64 deep stem of mmseg's ResNetV1c (timm resnet101c)",
    STEM_V1S: "the 64-64-128 deep stem of the resnet101.pth that U2PL and UniMatch use (timm resnet101s)",
}

# mmseg names its deep stem ``stem.N`` (conv, BN, ReLU three times); timm ``conv1.N`` with the
# last BN as ``bn1``. The residual stages have the same names in both.
MMSEG_STEM_PREFIX = "stem."
MMSEG_LAST_STEM_BN = "7"
# A whole segmentor checkpoint nests the backbone under a prefix: mmseg and UniMatch "backbone.",
# U2PL "encoder."; UniMatch and U2PL save the network under a key, with DDP's "module." prefix.
SEGMENTOR_BACKBONE_PREFIXES = ("backbone.", "encoder.")
SEGMENTOR_CONTAINERS = ("model", "teacher_state", "model_state")  # UniMatch; U2PL (its reported teacher first)
DDP_PREFIX = "module."

# timm's own weights: "timm" (the default tag of model.backbone) or "timm:<model>.<tag>".
TIMM_SPEC = "timm"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm stores on the Hugging Face Hub
SAFETENSORS_SUFFIX = ".safetensors"


class PretrainedError(UserError, ValueError):
    """A pretrained weight file is missing, unreadable or does not fit the backbone."""


@dataclass(frozen=True)
class Layout:
    """What a state dict (timm names) holds: stem channels, blocks per stage, block type."""

    stem: tuple[int, ...]
    blocks: tuple[int, ...]
    bottleneck: bool

    def describe(self) -> str:
        depth = DEPTHS.get((self.blocks, self.bottleneck))
        net = f"ResNet-{depth}" if depth else f"ResNet with {self.blocks} blocks per stage"
        return f"a {net} with {STEM_NAMES.get(self.stem, f'a {self.stem} stem')}"


def layout_of(state: dict[str, torch.Tensor]) -> Layout | None:
    """The layout of a ResNet state dict in timm names, or None when it lacks a stem or a stage."""
    if "conv1.weight" in state:
        stem: tuple[int, ...] = (state["conv1.weight"].shape[0],)
    elif all(f"conv1.{i}.weight" in state for i in (0, 3, 6)):
        stem = tuple(state[f"conv1.{i}.weight"].shape[0] for i in (0, 3, 6))
    else:
        return None
    blocks = []
    for stage in range(1, NUM_STAGES + 1):
        pattern = re.compile(rf"{RESIDUAL_STAGE_PREFIX}{stage}\.(\d+)\.")
        found = {m.group(1) for k in state if (m := pattern.match(k))}
        if not found:
            return None
        blocks.append(len(found))
    return Layout(stem=stem, blocks=tuple(blocks), bottleneck=f"{RESIDUAL_STAGE_PREFIX}1.0.conv3.weight" in state)


def _from_mmseg(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(state in timm names, the naming it came in)."""
    if not any(k.startswith(("conv1", RESIDUAL_STAGE_PREFIX)) for k in state):
        for prefix in SEGMENTOR_BACKBONE_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
    if not any(k.startswith(MMSEG_STEM_PREFIX) for k in state):
        return state, "torchvision/timm names"
    renamed = {}
    for k, v in state.items():
        if k.startswith(MMSEG_STEM_PREFIX):
            index, rest = k[len(MMSEG_STEM_PREFIX):].split(".", 1)
            k = f"bn1.{rest}" if index == MMSEG_LAST_STEM_BN else f"conv1.{index}.{rest}"
        renamed[k] = v
    return renamed, "mmseg names (stem.*)"


def resolve_pretrained(spec: str | Path, backbone: str, *, cache_dir: str | Path | None = None) -> Path:
    """The file behind ``model.pretrained``: a path as given, or timm's cached weights for
    ``"timm"`` / ``"timm:<model>.<tag>"``. Never downloads; raises PretrainedError saying where to
    put the file when it is not there."""
    text = str(spec)
    if text != TIMM_SPEC and not text.startswith(TIMM_SPEC + ":"):
        return Path(spec)
    name = backbone if text == TIMM_SPEC else text[len(TIMM_SPEC) + 1:]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        cfg = None
    if cfg is None:
        known = ", ".join(timm.list_pretrained(f"{backbone}.*")) or "none"
        raise PretrainedError(f"model.pretrained '{text}': timm has no weights named '{name}'; "
                              f"timm's weights for {backbone}: {known}")
    if cfg.architecture != backbone:
        raise PretrainedError(f"model.pretrained '{text}': these are weights of timm's {cfg.architecture}, but "
                              f"model.backbone is {backbone}; set model.backbone={cfg.architecture} or pick "
                              f"weights of {backbone}")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    looked = []
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache  # timm's optional dependency

        for filename in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
        looked.append(f"{cfg.hf_hub_id} ({' or '.join(HF_WEIGHT_FILES)}) in the Hugging Face cache "
                      f"{cache_dir or constants.HF_HUB_CACHE}")
    if cfg.url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if hub_file.is_file():
            return hub_file
        looked.append(f"{hub_file}")
    raise PretrainedError(
        f"model.pretrained '{text}': timm's weights {full} are not in the local cache (looked for "
        f"{'; and '.join(looked)}); nothing is downloaded. On a machine with network, run "
        f"`huggingface-cli download {cfg.hf_hub_id}` and copy the Hugging Face cache here, or download "
        f"{cfg.url or 'the weight file'} and put it at {looked[-1] if cfg.url else 'a path of your choice'} "
        f"(or anywhere, with model.pretrained set to its path)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weight file (``torch.save`` state dict, optionally under ``state_dict``, or safetensors)."""
    if not path.is_file():
        raise PretrainedError(f"pretrained weights '{path}' do not exist")
    # lazy: export_format builds models, which import this module
    from fastforec.export_format import refuse_onnx

    refuse_onnx(path, "model.pretrained", error=PretrainedError)  # torch.load would call it "corrupt"
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            state = load_file(path)
        else:
            state = torch_load(path)
    except Exception as e:  # torch/safetensors raise several types for truncated/corrupt archives
        if (what := refusal(e, path)) is not None:
            raise PretrainedError(f"pretrained weights '{path}' {what}") from None
        raise PretrainedError(f"pretrained weights '{path}' cannot be read ({first_line(e)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        # a peer's trained checkpoint (model.pretrained = fine-tuning from it): its encoder
        nested = next((state[k] for k in SEGMENTOR_CONTAINERS if isinstance(state.get(k), dict)), None)
        if nested is not None:
            state = nested
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    if isinstance(state, dict) and isinstance(state.get("student"), dict) and "format" in state:
        state = state["student"]  # a fastforec training checkpoint: its student (pretraining on other data)
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith(FASTFOREC_ENCODER_PREFIX) for k in state):
        # a fastforec network (that student, or a `fastforec export` safetensors file): its encoder
        prefix = FASTFOREC_ENCODER_PREFIX
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"'{path}' is not a state dict of tensors (a torchvision ResNet checkpoint is expected)")
    return state


class ResNetBackbone(nn.Module):
    """``width`` scales the channels of the four residual stages (1.0: the standard 64-128-256-512,
    the only width ImageNet weights fit). Narrower networks exist for CPU-sized benchmarks trained
    from scratch or from a fastforec checkpoint of the same width; the 7x7 stem stays at 64."""

    def __init__(self, *, name: BackboneName, output_stride: int, width: float = 1.0, maxpool_ceil: bool = False):
        super().__init__()
        if name not in BACKBONE_LAYOUTS:
            raise ValueError(f"backbone '{name}' is not a ResNet; choose one of {', '.join(BACKBONE_LAYOUTS)}")
        if width <= 0:
            raise ValueError(f"backbone width must be > 0, got {width}")
        self.name = name
        narrow = {} if width == 1.0 else {"channels": tuple(max(1, round(c * width)) for c in STAGE_CHANNELS)}
        self.body = timm.create_model(name, pretrained=False, features_only=True, output_stride=output_stride,
                                      out_indices=(LOW_LEVEL_STAGE, LAST_STAGE), **narrow)
        self.low_channels, self.high_channels = self.body.feature_info.channels()
        # U2PL's ResNet pools its stem with ceil_mode=True: on even-sized stem outputs c1 is then
        # one pixel larger than torchvision's, and its weights expect that geometry.
        self.body.maxpool.ceil_mode = maxpool_ceil

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1, c4 = self.body(x)
        return c1, c4

    def load_pretrained(self, spec: str | Path, *, show: bool = True,
                        cache_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
        """Load ImageNet weights (a file, or ``"timm"``/``"timm:<name>"``, see the module doc).
        Returns (missing, unexpected) keys; prints a table of them with ``show``.

        Every stem and stage tensor must arrive; only BN step counters may be missing (torchvision's
        published weights predate them). The classifier (``fc.*``) is unused and not reported."""
        path = resolve_pretrained(spec, self.name, cache_dir=cache_dir)
        state, naming = _from_mmseg(read_state_dict(path))
        own = self.body.state_dict()
        matched = {k: v for k, v in state.items() if k in own}
        if not matched:
            raise PretrainedError(f"'{path}': no parameter name matches the backbone; expected torchvision "
                                  f"ResNet names such as 'conv1.weight', 'layer1.0.conv1.weight', or mmseg's "
                                  f"'stem.0.weight'")
        own_layout = Layout(*BACKBONE_LAYOUTS[self.name])
        file_layout = layout_of(state)
        if file_layout is not None and file_layout != own_layout:
            fits = [n for n, lay in BACKBONE_LAYOUTS.items() if Layout(*lay) == file_layout]
            advice = (f"set model.backbone={fits[0]}" if fits else
                      f"no backbone here has that layout (choose among {', '.join(BACKBONE_LAYOUTS)})")
            raise PretrainedError(f"'{path}' holds {file_layout.describe()}; the backbone '{self.name}' is "
                                  f"{own_layout.describe()}: {advice}")
        for k, v in matched.items():
            if v.shape != own[k].shape:
                raise PretrainedError(f"'{path}': parameter '{k}' has shape {tuple(v.shape)}, the backbone "
                                      f"expects {tuple(own[k].shape)}; is it the right ResNet depth?")
        missing = sorted(set(own) - set(matched))
        unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(CLASSIFIER_PREFIX))
        # ResNet-50 and -101 share every shape and differ only in the number of layer3 blocks, and
        # a stem left at random would silently cost accuracy: every tensor but a BN step counter
        # must come from the file.
        required_missing = [k for k in missing if not k.endswith(BN_COUNTER)]
        stage_unexpected = [k for k in unexpected if k.startswith(RESIDUAL_STAGE_PREFIX)]
        if required_missing or stage_unexpected:
            raise PretrainedError(
                f"'{path}': the file does not match the backbone '{self.name}' ({len(required_missing)} tensors "
                f"missing from the file, e.g. {required_missing[:1]}; {len(stage_unexpected)} residual-stage "
                f"tensors not in the backbone, e.g. {stage_unexpected[:1]}); is it the right ResNet depth?")
        self.body.load_state_dict(matched, strict=False)
        log.info("loaded %d tensors from %s (%s); missing %d, unexpected %d", len(matched), path, naming,
                 len(missing), len(unexpected))
        if show:
            show_load(spec, path, naming, len(matched), missing, unexpected)
        return missing, unexpected


def show_load(spec: str | Path, path: Path, naming: str, loaded: int, missing: list[str],
              unexpected: list[str]) -> None:
    """Print where pretrained weights came from and the loaded / missing / unexpected table."""
    console = Console(stderr=True)
    source = str(spec) if str(path) == str(spec) else f"{spec} -> {path}"
    console.print(f"pretrained backbone weights: {source} ({naming})", soft_wrap=True, markup=False, highlight=False)
    console.print(load_table(loaded, missing, unexpected))


def load_table(loaded: int, missing: list[str], unexpected: list[str]) -> Table:
    """The short report printed after loading pretrained weights."""
    table = Table()
    for column in ("tensors loaded", "missing", "unexpected"):
        table.add_column(column, justify="right")
    table.add_row(str(loaded), str(len(missing)), str(len(unexpected)))
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            table.caption = (table.caption + "; " if table.caption else "") + f"{kind}: {', '.join(keys[:5])}" + (
                f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
    return table
