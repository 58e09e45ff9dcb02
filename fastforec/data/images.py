"""Input images as the model needs them (8-bit RGB), and how undecodable bytes are described.

PIL names the object it was given, and for bytes that is ``<_io.BytesIO object at 0x...>``: useless
in a message. Callers name the file (or shard and member) themselves; this says what is wrong.

``convert("RGB")`` is wrong for images of more than 8 bits: a 16-bit greyscale PNG (mode
``I;16``) is clipped, and 99 % of a typical one becomes white. :func:`to_rgb8` scales such images
to 8 bits and refuses what has no 8-bit meaning (floating point), naming the mode.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_MAX = 65535
EIGHT_BIT_MAX = 255
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_BIT_DEPTH_OFFSET = 24  # the IHDR chunk's bit-depth byte
EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 = stored as displayed, 2..8 = mirrored and/or rotated
NORMAL_ORIENTATION = 1


class ImageModeError(ValueError):
    """An image whose pixel values have no 8-bit RGB meaning (the message names its mode)."""


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img``, whatever mode PIL opened it in: 16-bit greyscale (``I;16*``,
    and ``I`` with values in 0..65535) is scaled by 255/65535; alpha is dropped; palette, CMYK and
    YCbCr are converted by PIL. Raises :class:`ImageModeError` for floating point and others."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > SIXTEEN_BIT_MAX):
            raise ImageModeError(f"32-bit integer image (mode {img.mode}) with values outside 0..65535; "
                                 f"convert it to 8-bit RGB first")
        grey = np.round(values * (EIGHT_BIT_MAX / SIXTEEN_BIT_MAX)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode == "F":
        raise ImageModeError("floating-point image (mode F) has no 8-bit meaning; convert it to 8-bit RGB first")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # a palette with transparency converts through RGBA
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageModeError(f"images of mode {img.mode} cannot be converted to RGB here; convert it to 8-bit "
                             f"RGB first") from None


def displayed(img: Image.Image) -> Image.Image:
    """``img`` as a viewer shows it: the EXIF orientation (a phone photo's rotation or mirror,
    stored as a tag instead of in the pixels) applied. Users draw masks on, and expect
    predictions for, this picture, so every image entering fastforec or dataprep goes through here;
    an image without the tag (or with orientation 1) comes back as it is."""
    return ImageOps.exif_transpose(img) if exif_orientation(img) != NORMAL_ORIENTATION else img


def exif_orientation(img: Image.Image) -> int:
    return int(img.getexif().get(EXIF_ORIENTATION, NORMAL_ORIENTATION) or NORMAL_ORIENTATION)


def png_bit_depth(data: bytes | bytearray | memoryview) -> int | None:
    """Bits per sample of PNG bytes (8 for ordinary PNGs, 16 for deep ones), None if not a PNG."""
    head = bytes(data[:PNG_BIT_DEPTH_OFFSET + 1])
    if len(head) <= PNG_BIT_DEPTH_OFFSET or not head.startswith(PNG_SIGNATURE):
        return None
    return head[PNG_BIT_DEPTH_OFFSET]

_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decode_problem(error: Exception, data: bytes | bytearray | memoryview) -> str:
    """Why ``data`` did not decode: empty, not an image format PIL knows, or the decoder's error."""
    if len(data) == 0:
        return "the file is empty (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return f"not a recognisable image ({len(data)} bytes that are no JPEG, PNG or other known format)"
    text = _OBJECT_REPR.sub("", str(error)).strip() or "no details"
    return f"{type(error).__name__}: {text}"
