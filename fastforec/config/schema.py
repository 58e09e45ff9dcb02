"""The run config's schema: one dataclass per component, each with a ``validate`` that checks its own
values (key path and what is allowed in every message). Cross-component needs of a method's base
are methods.check_config's; files on disk are the data and model sides' (``check_paths``,
models.build.check_pretrained)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastforec.errors import UserError

# Every choice below is spelled once, as a Literal (what the config accepts and type checkers
# see); the tuples are read from it.
BackboneName = Literal["resnet18", "resnet50", "resnet50s", "resnet101", "resnet101c", "resnet101s",
                       "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14",
                       "dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16"]
# A method is base x auxiliary task (method.base, method.aux). The base says where the unlabeled
# signal comes from; what each base needs (teacher, views, loss weights) is methods.BASES.
BaseName = Literal["supervised", "mean_teacher", "fixmatch", "unimatch", "unimatch_v2"]
AuxName = Literal["none", "rec", "forec", "fgbg"]  # the auxiliary decoder's task
# whose DeepLabV3+ decoder (models/deeplab.py), or UniMatch V2's DPT head for the DINO ViTs (models/dpt.py)
DecoderName = Literal["unimatch", "u2pl", "torchvision", "dpt"]
BACKBONES: tuple[str, ...] = typing.get_args(BackboneName)
BASES: tuple[str, ...] = typing.get_args(BaseName)
AUX_TASKS: tuple[str, ...] = typing.get_args(AuxName)
DECODERS: tuple[str, ...] = typing.get_args(DecoderName)
DPT_DECODER = "dpt"


@dataclass(frozen=True)
class VitFamily:
    """A family of DINO ViTs (they take the DPT head): what the config checks against."""

    name: str
    patch: int  # crops and whole-image evaluation sizes are multiples of it
    crops: str  # UniMatch V2's crops at this patch size, for the messages


# By backbone name prefix. DINOv3's crops are the multiples of 16 nearest to UniMatch V2's 518 / 798.
VIT_FAMILIES = {"dinov2_": VitFamily("DINOv2", 14, "518 on VOC, 798 on Cityscapes"),
                "dinov3_": VitFamily("DINOv3", 16, "512 on VOC, 800 on Cityscapes")}
DINOV2 = VIT_FAMILIES["dinov2_"]  # UniMatch V2's own checkpoints are DINOv2


def vit_family(backbone: str) -> VitFamily | None:
    """The DINO family of ``backbone``, or None for a ResNet."""
    return next((f for prefix, f in VIT_FAMILIES.items() if backbone.startswith(prefix)), None)


def _vit_names() -> str:
    return " / ".join(b for b in typing.get_args(BackboneName) if vit_family(b) is not None)

# Checkpoints written before model.decoder existed were trained with this decoder.
LEGACY_DECODER = "torchvision"
# Before base x aux, a method was one name (method.name). Configs and checkpoints that carry it
# keep loading (upgrade_legacy_keys): the name stands for this pair, a base/aux beside it wins.
LEGACY_METHOD_NAMES = {"supervised": ("supervised", "none"), "mean_teacher": ("mean_teacher", "none"),
                       "rec": ("mean_teacher", "rec"), "forec": ("mean_teacher", "forec"),
                       "fgbg": ("mean_teacher", "fgbg")}
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max, without importing torch here


class ConfigError(UserError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def _check_prob(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")


def _check_range(lo: float, hi: float, key: str, *, lo_min: float = 0.0) -> None:
    _check(lo_min <= lo <= hi, key, f"needs {lo_min} <= min <= max, got min={lo}, max={hi}")


@dataclass
class AugConfig:
    """Augmentation recipe (docs/architecture.md section A, steps 1-2). Probabilities and ranges only."""

    scale_min: float = 0.5
    scale_max: float = 2.0
    flip_prob: float = 0.5
    labeled_strong: bool = False  # photometric augmentation on the labeled student input too
    jitter_prob: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    cutmix_prob: float = 0.5
    cutmix_area_min: float = 0.02
    cutmix_area_max: float = 0.4
    cutmix_aspect_min: float = 0.3  # aspect ratio h/w drawn uniformly in [min, 1/min], as UniMatch draws it

    def validate(self, prefix: str) -> None:
        _check_range(self.scale_min, self.scale_max, f"{prefix}.scale_min/scale_max", lo_min=1e-3)
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "cutmix_prob"):
            _check_prob(getattr(self, name), f"{prefix}.{name}")
        for name in ("brightness", "contrast", "saturation"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{prefix}.{name}", "must be in [0, 1]")
        _check(0.0 <= self.hue <= 0.5, f"{prefix}.hue", f"must be in [0, 0.5], got {self.hue}")
        _check_range(self.blur_sigma_min, self.blur_sigma_max, f"{prefix}.blur_sigma_min/blur_sigma_max")
        _check_range(self.cutmix_area_min, self.cutmix_area_max, f"{prefix}.cutmix_area_min/cutmix_area_max")
        _check(self.cutmix_area_max <= 1.0, f"{prefix}.cutmix_area_max", "must be <= 1")
        _check(0.0 < self.cutmix_aspect_min <= 1.0, f"{prefix}.cutmix_aspect_min", "must be in (0, 1]")


@dataclass
class DataConfig:
    """Where the shards are and how batches are made. ``batch_size`` is per rank and per step,
    for labeled and unlabeled data each (the paper's "batch 16" counts labeled images)."""

    root: str = "data/synth_voc"
    crop_size: int = 512
    batch_size: int = 8
    num_threads: int = 2
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # Checked against the manifest before training: "sha256" re-hashes every shard (seconds for
    # VOC, see docs/benchmarks.md), "size" only compares byte counts (catches truncation, not
    # flipped bytes).
    verify_shards: Literal["sha256", "size"] = "sha256"
    aug: AugConfig = field(default_factory=AugConfig)

    def validate(self, prefix: str = "data") -> None:
        _check(self.crop_size >= 16, f"{prefix}.crop_size", f"must be >= 16, got {self.crop_size}")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.num_threads >= 1, f"{prefix}.num_threads", "must be >= 1")
        self.aug.validate(f"{prefix}.aug")


@dataclass
class ModelConfig:
    backbone: BackboneName = "resnet101"
    output_stride: int = 16
    # Whose DeepLabV3+ decoder, exactly as that source builds it (dropout, widths, align_corners):
    # "unimatch" (also FOrec's), "u2pl", or "torchvision" (fastforec's before 2026-12, for old checkpoints)
    decoder: DecoderName = "unimatch"
    # ImageNet weights: a local file (torchvision/timm names, U2PL/UniMatch's deep-stem resnet101.pth
    # with resnet101s, mmseg ResNetV1c with resnet101c), or "timm" / "timm:<name>" from the local cache
    pretrained: str | None = None
    sync_bn: bool = True  # used on CUDA only: SyncBatchNorm refuses CPU tensors
    decoder_channels: int = 256  # ASPP/fuse width of both decoders (the paper's 256; less for CPU demos)
    # Channel multiplier of the ResNet stages: 1.0 is the standard network (and the only width that
    # ImageNet weights fit); 0.5 quarters the backbone's FLOPs for CPU-sized benchmarks from scratch.
    backbone_width: float = 1.0
    # DINO ViTs only: recompute each ViT block in the backward pass instead of keeping its
    # activations (about a third more compute; what fits ViT-L at crop 518, 4 + 4 images, in 80 GB)
    activation_checkpointing: bool = False

    @property
    def vit_family(self) -> VitFamily | None:
        return vit_family(self.backbone)

    @property
    def is_vit(self) -> bool:
        return self.vit_family is not None

    def validate(self, prefix: str = "model") -> None:
        family = self.vit_family
        if family is not None:
            _check(self.decoder == DPT_DECODER, f"{prefix}.decoder",
                   f"'{self.decoder}' is a DeepLabV3+ decoder for ResNets; the {family.name} backbone {self.backbone} "
                   f"takes UniMatch V2's DPT head: set {prefix}.decoder={DPT_DECODER}")
        else:
            _check(self.decoder != DPT_DECODER, f"{prefix}.decoder",
                   f"'{DPT_DECODER}' is the head of the DINOv2 and DINOv3 backbones; {self.backbone} takes a "
                   f"DeepLabV3+ decoder (unimatch, u2pl or torchvision), or set {prefix}.backbone to one of "
                   f"{_vit_names()}")
            _check(not self.activation_checkpointing, f"{prefix}.activation_checkpointing",
                   f"is offered for the DINOv2 and DINOv3 backbones only, not {self.backbone}; set it to false")
        _check(self.decoder_channels >= 8, f"{prefix}.decoder_channels", "must be >= 8")
        _check(0 < self.backbone_width <= 4, f"{prefix}.backbone_width",
               f"must be in (0, 4] (1.0 = the standard ResNet), got {self.backbone_width}")
        _check(self.output_stride in (8, 16), f"{prefix}.output_stride",
               f"must be 8 or 16, got {self.output_stride}")


@dataclass
class MethodConfig:
    """The semi-supervised recipe. ``rec_conf_thresh`` defaults to ``conf_thresh``;
    ``fg_classes`` defaults to the dataset manifest's ``foreground_classes``."""

    base: BaseName = "mean_teacher"
    aux: AuxName = "forec"
    conf_thresh: float = 0.95
    rec_conf_thresh: float | None = None
    lambda_u: float = 1.0
    rec_weight_labeled: float = 1.0
    rec_weight_unlabeled: float = 0.5
    fg_classes: list[int] | None = None
    ema_decay: float = 0.99
    warmup_epochs: int = 0  # supervised-only epochs before the unlabeled losses start
    # At the end of the warm-up the teacher becomes a copy of the student and its EMA ramp starts
    # again (U2PL does this): an average over the warm-up's fast-moving weights is a worse
    # pseudo-labeller than the student it lags behind. None: on whenever warmup_epochs > 0.
    warmup_reset_teacher: bool | None = None
    kernels: Literal["auto", "triton", "torch"] = "auto"
    fp_dropout: float = 0.5  # UniMatch's feature perturbation: channel dropout on the weak view's c1 and c4
    # UniMatch V2's complementary channel dropout on the two strong views: the share of image
    # pairs left undropped (its dropout_prob 0.5); the others get complementary masks
    comp_drop_keep: float = 0.5

    def validate(self, prefix: str = "method") -> None:
        _check_prob(self.conf_thresh, f"{prefix}.conf_thresh")
        _check(0.0 <= self.fp_dropout < 1.0, f"{prefix}.fp_dropout", f"must be in [0, 1), got {self.fp_dropout}")
        _check_prob(self.comp_drop_keep, f"{prefix}.comp_drop_keep")
        if self.rec_conf_thresh is not None:
            _check_prob(self.rec_conf_thresh, f"{prefix}.rec_conf_thresh")
        _check(0.0 <= self.ema_decay < 1.0, f"{prefix}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        for name in ("lambda_u", "rec_weight_labeled", "rec_weight_unlabeled"):
            _check(getattr(self, name) >= 0.0, f"{prefix}.{name}", "must be >= 0")
        _check(self.warmup_epochs >= 0, f"{prefix}.warmup_epochs", "must be >= 0")
        if self.fg_classes is not None:
            _check(all(c >= 0 for c in self.fg_classes), f"{prefix}.fg_classes", "class ids must be >= 0")
            _check(len(self.fg_classes) > 0, f"{prefix}.fg_classes", "must name at least one class (or be null: "
                   "the dataset's foreground classes); with none, FOrec and fg/bg have nothing to learn")

    @property
    def label(self) -> str:
        """The method's one name: ``base+aux`` (``base`` alone without an auxiliary task), the form
        `fastforec ablate --methods` takes."""
        return self.base if self.aux == "none" else f"{self.base}+{self.aux}"

    @property
    def reconstruction(self) -> str | None:
        """The auxiliary head the method needs: "rgb", "fgbg" or None."""
        return {"rec": "rgb", "forec": "rgb", "fgbg": "fgbg"}.get(self.aux)

    @property
    def resets_teacher(self) -> bool:
        return self.warmup_epochs > 0 and self.warmup_reset_teacher is not False

    @property
    def rec_thresh(self) -> float:
        return self.conf_thresh if self.rec_conf_thresh is None else self.rec_conf_thresh


@dataclass
class LossConfig:
    """The labeled (supervised) loss: plain CE, or OHEM as UniMatch and U2PL train Cityscapes with
    (``losses.ohem_ce``: pixels whose true-class probability is <= ``ohem_thresh``, at least
    ``ohem_min_kept`` of them per rank's labeled batch)."""

    labeled: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 200000

    def validate(self, prefix: str = "loss") -> None:
        _check_prob(self.ohem_thresh, f"{prefix}.ohem_thresh")
        # UniMatch's code skips the mining entirely at min_kept 0: say so rather than mimic it
        _check(self.ohem_min_kept >= 1, f"{prefix}.ohem_min_kept",
               f"must be >= 1, got {self.ohem_min_kept} (for plain cross-entropy set {prefix}.labeled=ce)")


@dataclass
class OptimConfig:
    """SGD (the CNN recipes) or AdamW (UniMatch V2's) with poly decay per step; the decoders get
    ``lr * head_lr_mult``. ``momentum`` is SGD's, ``betas`` AdamW's."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    head_lr_mult: float = 10.0
    poly_power: float = 0.9

    def validate(self, prefix: str = "optim") -> None:
        _check(self.lr > 0, f"{prefix}.lr", f"must be > 0, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, f"{prefix}.momentum", "must be in [0, 1)")
        _check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), f"{prefix}.betas",
               f"must be two numbers in [0, 1) (AdamW's beta1, beta2; UniMatch V2: [0.9, 0.999]), got {self.betas}")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _check(self.head_lr_mult > 0, f"{prefix}.head_lr_mult", "must be > 0")
        # torch converts the step size to the weights' float32 and refuses one beyond its range
        _check(self.lr * self.head_lr_mult < FLOAT32_MAX, f"{prefix}.lr",
               f"lr x head_lr_mult = {self.lr * self.head_lr_mult:g} is beyond the float32 range")
        _check(self.poly_power >= 0, f"{prefix}.poly_power", "must be >= 0")


@dataclass
class TrainConfig:
    name: str = "run"
    epochs: int = 80
    max_steps: int | None = None  # overrides epochs when set
    log_every: int = 20
    checkpoint_every: int = 500  # in optimizer steps; the end of a run is always saved
    keep_checkpoints: int = 2
    seed: int = 0
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    tensorboard: bool = True  # event files in runs/<name>/tensorboard/ (W&B, CSV: the deepspeed monitor blocks)
    # Throughput switches (docs/benchmarks.md has them measured on and off):
    channels_last: bool = False  # NHWC inputs and teacher (tensor-core convolutions prefer it; see trainer)
    cudnn_benchmark: bool = True  # cuDNN times its algorithms per input shape (CUDA only; crops are fixed)
    compile: bool = False  # torch.compile the student (the first steps pay the compilation)
    # CPU runs whose deepspeed block names no precision: the bf16 block on a CPU with AMX-BF16, fp32
    # elsewhere (fastforec.precision.cpu_precision_block; the CPU recipes turn it on). The run's
    # config.json and checkpoints record the choice; a resume or an evaluation keeps it.
    bf16_on_amx: bool = False
    # Deterministic GPU kernels where PyTorch has them (fastforec.determinism; README says what
    # remains): slower, and cudnn_benchmark is then off. The CPU is deterministic either way.
    deterministic: bool = False

    def validate(self, prefix: str = "train") -> None:
        _check(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), f"{prefix}.name",
               "must be a non-empty name without '/', other than '.' and '..' (it names the folder runs/<name>)")
        _check(self.epochs >= 1, f"{prefix}.epochs", "must be >= 1")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, f"{prefix}.max_steps", "must be >= 1 (or null for epochs)")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")


@dataclass
class EvalConfig:
    """How models are scored on the val split: during training, by `fastforec eval` and by
    `fastforec predict` (the mode rule itself is ``fastforec.evaluate.resolve_eval_mode``)."""

    mode: Literal["auto", "whole", "sliding"] = "auto"  # auto: sliding window on Cityscapes, else whole
    stride_ratio: float = 2.0 / 3.0  # sliding window stride as a fraction of the window (= data.crop_size)
    # Where the windows go and how they merge (fastforec.evaluate.SlidingProtocol): "border_aligned"
    # (full windows, logits averaged), "unimatch" (UniMatch's: cut-short border windows, softmax summed)
    # or "unimatch_v2" (UniMatch V2's: full border-aligned windows, softmax summed)
    sliding_protocol: Literal["border_aligned", "unimatch", "unimatch_v2"] = "border_aligned"
    # Whole-image evaluation: resize each image to the nearest multiple of this (bilinear,
    # align_corners=True) and the prediction back, as UniMatch V2 does for its ViTs (14); null: as is
    size_multiple: int | None = None
    batch_size: int = 1
    every: int = 1  # in epochs; the end of training is always evaluated
    # Which model training scores: the student, the EMA teacher (U2PL reports the teacher), or
    # both (the student's numbers stay the headline ones; methods without a teacher score the student).
    model: Literal["student", "teacher", "both"] = "student"

    def validate(self, prefix: str = "eval") -> None:
        _check(0.0 < self.stride_ratio <= 1.0, f"{prefix}.stride_ratio", "must be in (0, 1]")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        _check(self.every >= 1, f"{prefix}.every", "must be >= 1")
        if self.size_multiple is not None:
            _check(self.size_multiple >= 1, f"{prefix}.size_multiple", "must be >= 1 (or null)")

    def stride(self, window: int) -> int:
        # UniMatch's int(crop * 2 / 3): 801 * (2/3) is 533.99999... in floating point, 534 for it
        return max(1, int(window * self.stride_ratio + 1e-9))


@dataclass
class RecipeConfig:
    """Where a published training setting comes from. Informational: nothing reads it to train,
    but every shipped recipe fills it in and `fastforec recipes` tabulates it (docs/reproduce.md)."""

    source: str = ""  # repository, file and commit, or the paper and its table
    dataset: str = ""  # voc_classic, voc_blender or cityscapes
    split: str | None = None  # the partition list directory `dataprep` converts for data.root
    published_miou: float | None = None  # the source's number for this setting (mIoU %)
    # where fastforec differs from the source, and why, by topic (a dict, so that a recipe's notes
    # merge with those of what it extends and one can be replaced by name)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    def validate(self) -> None:
        self.data.validate("data")
        self.model.validate("model")
        self.method.validate("method")
        self.loss.validate("loss")
        self.optim.validate("optim")
        self.train.validate("train")
        self.eval.validate("eval")
        family = self.model.vit_family
        if family is not None:
            patch = family.patch
            _check(self.data.crop_size % patch == 0, "data.crop_size",
                   f"is {self.data.crop_size}, but {self.model.backbone} cuts images into {patch}x{patch} "
                   f"patches and would drop the remainder: use a multiple of {patch} (UniMatch V2 on {family.name}: "
                   f"{family.crops})")
            multiple = self.eval.size_multiple
            _check(multiple is None or multiple % patch == 0, "eval.size_multiple",
                   f"is {multiple}, but {self.model.backbone} cuts images into {patch}x{patch} patches: use "
                   f"{patch} (or null)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_paths(self) -> None:
        """Fail early when the dataset the run needs is missing (called before any process group).
        The pretrained encoder file is the model side's: models.build.check_pretrained."""
        manifest = Path(self.data.root) / "manifest.json"
        _check(manifest.is_file(), "data.root",
               f"no manifest.json in '{self.data.root}'; run `dataprep` to create the shards or fix the path")
        # lazy: loading a config, and so `--help` and config errors, must not import torch
        if self.method.fg_classes is not None:
            from fastforec.data.manifest import Manifest

            num_classes = Manifest.load(self.data.root).num_classes
            wrong = [c for c in self.method.fg_classes if c >= num_classes]
            _check(not wrong, "method.fg_classes", f"class ids {wrong} do not exist: the dataset in "
                                                   f"'{self.data.root}' has {num_classes} classes "
                                                   f"(0..{num_classes - 1})")
