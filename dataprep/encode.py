"""Per-sample work, run in the worker processes: read, fully decode (to catch truncation),
validate, map label ids to train ids and encode. Returns bytes, never raises on bad data:
a bad sample comes back as a Rejection so the parent decides (stop, or --skip-bad)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fastforec.data.images import ImageModeError, decode_problem, displayed, png_bit_depth, to_rgb8

from .conversion_plan import EncodeOptions, SampleSource
from .errors import Rejection

# zlib level for label PNGs: labels are mostly flat regions, so the default level already gives
# small files at well under a millisecond per VOC-sized mask.
LABEL_PNG_COMPRESS_LEVEL = 6
KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png"}
KEEP_MODES = ("RGB", "L")
LABEL_MODES = ("P", "L")  # palette indices (VOC) or grey values (SegmentationClassAug, Cityscapes)
_HISTOGRAM_BINS = 256


@dataclass(frozen=True)
class SampleTask:
    split: str
    source: SampleSource
    options: EncodeOptions


@dataclass(frozen=True)
class EncodedSample:
    split: str
    key: str
    image_ext: str  # "jpg" or "png"
    image: bytes
    label: bytes | None


class _BadSample(Exception):
    def __init__(self, file: Path, problem: str):
        super().__init__(problem)
        self.file = file
        self.problem = problem


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _BadSample(path, f"cannot read {what} ({e.strerror or e})") from None


def _decode(data: bytes, path: Path, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # decodes every pixel: a truncated file fails here, not in training
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for corrupt files
        raise _BadSample(path, f"unreadable or truncated {what} ({decode_problem(e, data)})") from None
    return img


def _encode_png(img: Image.Image, *, compress_level: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _rgb8(img: Image.Image, path: Path) -> Image.Image:
    try:
        return to_rgb8(img)
    except ImageModeError as e:
        raise _BadSample(path, str(e)) from None


def _image_bytes(data: bytes, img: Image.Image, shown: Image.Image, path: Path, options: EncodeOptions
                 ) -> tuple[str, bytes]:
    """(extension, bytes) for the shard; ``shown`` is ``img`` as displayed (``displayed(img)``)."""
    # a 16-bit PNG opens in an 8-bit mode for RGB, but its bytes are not what an 8-bit decoder reads
    keepable = img.format in KEEP_FORMATS and img.mode in KEEP_MODES and png_bit_depth(data) in (None, 8)
    if options.image_policy == "jpg":
        buf = io.BytesIO()
        _rgb8(shown, path).save(buf, format="JPEG", quality=options.jpeg_quality)
        return "jpg", buf.getvalue()
    if shown is not img:
        # EXIF-rotated: the training and evaluation decoders read the stored pixel grid (DALI with
        # adjust_orientation=False, so that labels stay aligned), so the shard gets the picture as
        # displayed, re-encoded losslessly, with no orientation tag left to apply twice
        return "png", _encode_png(_rgb8(shown, path), compress_level=LABEL_PNG_COMPRESS_LEVEL)
    if keepable:
        return KEEP_FORMATS[img.format], data
    if options.image_policy == "keep_or_png":
        return "png", _encode_png(_rgb8(img, path), compress_level=LABEL_PNG_COMPRESS_LEVEL)
    raise _BadSample(path, f"image is {img.format} in mode {img.mode}; expected a JPEG or PNG in RGB or grayscale")


def _label_bytes(path: Path, image_size: tuple[int, int], options: EncodeOptions) -> bytes:
    img = displayed(_decode(_read(path, "label"), path, "label"))  # masks are drawn on the displayed picture
    if img.mode not in LABEL_MODES:
        raise _BadSample(path, f"label has mode {img.mode}; expected a single-channel PNG of class ids "
                               f"(palette-indexed 'P' or grayscale 'L')")
    if img.size != image_size:
        raise _BadSample(path, f"label is {img.size[0]}x{img.size[1]} (WxH) but its image is "
                               f"{image_size[0]}x{image_size[1]}")
    values = np.asarray(img, dtype=np.uint8)
    counts = np.bincount(values.ravel(), minlength=_HISTOGRAM_BINS)
    valid = np.frombuffer(options.label_valid, dtype=np.uint8).astype(bool)
    bad = np.flatnonzero((counts > 0) & ~valid)
    if bad.size:
        raise _BadSample(path, f"label value(s) {bad.tolist()} are neither a class id nor 255 "
                               f"(allowed: {np.flatnonzero(valid).tolist()})")
    lut = np.frombuffer(options.label_lut, dtype=np.uint8)
    return _encode_png(Image.fromarray(lut[values]), compress_level=LABEL_PNG_COMPRESS_LEVEL)


def encode_sample(task: SampleTask) -> EncodedSample | Rejection:
    """Turn one source sample into shard bytes, or say precisely why it cannot be."""
    src = task.source
    try:
        data = _read(src.image, "image")
        img = _decode(data, src.image, "image")
        shown = displayed(img)  # what the shard holds, and what the label must fit
        ext, image = _image_bytes(data, img, shown, src.image, task.options)
        label = None if src.label is None else _label_bytes(src.label, shown.size, task.options)
    except _BadSample as bad:
        return Rejection(task.split, src.key, str(bad.file), bad.problem)
    return EncodedSample(split=task.split, key=src.key, image_ext=ext, image=image, label=label)
