"""What a study is: its data (``DataSpec``), its budgets and image formats, and its runs
(methods x budgets x formats x seeds, in the order they are run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fastforec.errors import UserError

# Defaults of the study (see docs/results.md for why): a few hundred small synthetic images.
DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 60
DEFAULT_SIZE = (96, 128)  # H x W of the synthetic images
DEFAULT_DATA_SEED = 0
DEFAULT_SPLIT_SEED = 0
STUDY_FORMAT = 2
PRESETS = ("scenes", "sslbench", "cityscapes")
# Shard image formats of the cityscapes preset (dataprep cityscapes --image-format); the VOC
# presets keep the synthetic JPEGs as they are.
IMAGE_FORMATS = ("png", "jpg")
DEFAULT_JPEG_QUALITY = 95
ALL = "all"  # the budget that labels every training image (sslbench)


class AblationError(UserError, ValueError):
    """Bad arguments or a study directory that does not match them."""


@dataclass(frozen=True)
class DataSpec:
    """What the synthetic dataset and its partitions are made from (stored in study.json)."""

    preset: str
    num_train: int
    num_val: int
    height: int
    width: int
    data_seed: int
    split_seed: int
    format: int = STUDY_FORMAT
    image_formats: str = ""  # cityscapes preset: comma-separated IMAGE_FORMATS, the first is the reference
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    @property
    def formats(self) -> list[str]:
        """The data variants of every budget: image formats, or [""] (the VOC presets' one variant)."""
        return self.image_formats.split(",") if self.image_formats else [""]

    @property
    def layout(self) -> str:
        return "cityscapes" if self.preset == "cityscapes" else "voc"


def variant(budget: str, image_format: str) -> str:
    """The key of one training set: its budget, and its image format when the study has several."""
    return f"{budget}_{image_format}" if image_format else budget


@dataclass(frozen=True)
class Run:
    method: str
    budget: str  # a number of labeled images, or "all"
    seed: int
    image_format: str = ""  # one of IMAGE_FORMATS in a cityscapes study

    @property
    def data(self) -> str:
        return variant(self.budget, self.image_format)

    @property
    def name(self) -> str:
        return f"{self.method}_b{self.data}_s{self.seed}"


def parse_budgets(text: str, *, num_train: int, preset: str) -> list[str]:
    """Budgets as strings: numbers of labeled images, and (sslbench) "all"."""
    tokens = [b.strip() for b in text.split(",") if b.strip()]
    numbers = [t for t in tokens if t != ALL]
    try:
        values = [int(t) for t in numbers]
    except ValueError:
        raise AblationError(f"--budgets: '{text}' is not a comma-separated list of integers (e.g. 20,40)"
                            + (f" or '{ALL}'" if preset == "sslbench" else "")) from None
    if ALL in tokens and preset != "sslbench":
        raise AblationError(f"--budgets: '{ALL}' exists for --preset sslbench only")
    # scenes: labeled ids come from the classic list, every second synthetic training id;
    # sslbench: every training id has a label, and "all" is the budget that uses them all.
    pool = num_train // 2 if preset == "scenes" else num_train - 1  # cityscapes: any training id
    bad = [b for b in values if not 1 <= b <= pool]
    if bad or not tokens:
        raise AblationError(f"--budgets: {bad or '(none)'} not in 1..{pool} (" +
                            (f"half of --num-train {num_train} images have classic labels)" if preset == "scenes"
                             else f"--num-train {num_train} minus one; use '{ALL}' for every image)"))
    if len(set(tokens)) != len(tokens):
        raise AblationError(f"--budgets: '{text}' names a budget twice")
    return [str(v) for v in values] + ([ALL] if ALL in tokens else [])


def parse_formats(text: str | None, *, preset: str) -> str:
    """--image-formats as DataSpec.image_formats: cityscapes only (default png)."""
    if preset != "cityscapes":
        if text:
            raise AblationError("--image-formats exists for --preset cityscapes only (the VOC presets keep "
                                "their synthetic JPEGs)")
        return ""
    formats = [f.strip() for f in (text or IMAGE_FORMATS[0]).split(",") if f.strip()]
    bad = [f for f in formats if f not in IMAGE_FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise AblationError(f"--image-formats: '{text}' must name distinct formats from {', '.join(IMAGE_FORMATS)}, "
                            f"e.g. png,jpg (the first is the one the others are compared with)")
    return ",".join(formats)


def plan_runs(methods: Sequence[str], budgets: Sequence[str], seeds: int, formats: Sequence[str] = ("",)) -> list[Run]:
    """Seed-major order: every (method, budget, format) gets its first seed before any gets a
    second, so a study stopped early has a complete table with fewer seeds."""
    return [Run(m, b, s, f) for s in range(seeds) for b in budgets for f in formats for m in methods]
