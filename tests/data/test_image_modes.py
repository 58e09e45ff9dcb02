"""Input images of every mode PIL opens become 8-bit RGB correctly, or are refused by name, in
`fastforec predict` (image_files.load_image) and in dataprep's encoder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataprep.conversion_plan import EncodeOptions
from dataprep.encode import _BadSample, _image_bytes
from fastforec.data.images import ImageModeError, png_bit_depth, to_rgb8
from fastforec.errors import UserError
from fastforec.image_files import load_image

GREY16 = np.array([[0, 257, 32768], [65535, 1000, 12850]], dtype=np.uint16)


def _grey16_png(path: Path) -> Path:
    Image.fromarray(GREY16).save(path)  # PIL writes mode I;16 as a 16-bit greyscale PNG
    return path


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = _grey16_png(tmp_path / "g16.png")
    assert png_bit_depth(path.read_bytes()) == 16
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        rgb = np.asarray(to_rgb8(im))
    want = np.round(GREY16 * (255 / 65535)).astype(np.uint8)
    assert rgb.shape == (2, 3, 3) and np.array_equal(rgb[..., 0], want) and np.array_equal(rgb[..., 2], want)
    image = load_image(path)  # what predict feeds the model
    assert np.allclose(image[0, 0].numpy() * 255, want)
    assert (rgb == 255).mean() < 0.5  # convert("RGB") turned all but the zeros white


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"])
def test_eight_bit_modes_convert_as_pil_does(mode: str) -> None:
    base = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5, mode="RGB")
    img = base.convert(mode)
    out = to_rgb8(img)
    assert out.mode == "RGB" and out.size == (4, 4)
    if mode in ("RGB", "RGBA", "CMYK"):
        assert np.abs(np.asarray(out).astype(int) - np.asarray(base).astype(int)).max() <= 2


def test_float_and_out_of_range_integer_images_are_refused_by_mode(tmp_path: Path) -> None:
    with pytest.raises(ImageModeError, match="floating-point image \\(mode F\\)"):
        to_rgb8(Image.fromarray(np.zeros((2, 2), dtype=np.float32)))
    with pytest.raises(ImageModeError, match="mode I\\) with values outside 0..65535"):
        to_rgb8(Image.fromarray(np.array([[70000]], dtype=np.int32)))
    path = tmp_path / "f.tiff"
    Image.fromarray(np.zeros((2, 2), dtype=np.float32)).save(path)
    with pytest.raises(UserError, match="f.tiff': floating-point image"):
        load_image(path)


def test_dataprep_re_encodes_a_16_bit_png_or_refuses_it_by_name(tmp_path: Path) -> None:
    path = _grey16_png(tmp_path / "g16.png")
    data = path.read_bytes()
    lut = bytes(range(256))
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        ext, out = _image_bytes(data, img, img, path, EncodeOptions("keep_or_png", 95, lut, lut))  # dataprep folder
        assert ext == "png" and png_bit_depth(out) == 8
        with Image.open(io.BytesIO(out)) as back:
            assert np.array_equal(np.asarray(back)[..., 0], np.round(GREY16 * (255 / 65535)).astype(np.uint8))
        with pytest.raises(_BadSample, match="image is PNG in mode I;16"):  # dataprep voc keeps bytes: refuses
            _image_bytes(data, img, img, path, EncodeOptions("keep", 95, lut, lut))
    # a 16-bit RGB PNG opens as 8-bit RGB in PIL, but its bytes are not 8-bit: re-encoded, not kept
    rgb16 = tmp_path / "rgb16.png"
    _write_rgb16_png(rgb16)
    with Image.open(rgb16) as img:
        img.load()
        ext, out = _image_bytes(rgb16.read_bytes(), img, img, rgb16, EncodeOptions("keep_or_png", 95, lut, lut))
    assert ext == "png" and png_bit_depth(out) == 8


def _write_rgb16_png(path: Path) -> None:
    """A 2x2 48-bit RGB PNG written by hand (PIL cannot write 16-bit RGB)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + struct.pack(">6H", 65535, 0, 32768, 1000, 2000, 3000) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
