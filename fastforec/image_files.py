"""Image files in and out of a trained model: the inputs of `fastforec predict` and
`fastforec visualize latent`, and the palette masks and overlays `predict` writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastforec.data.images import ImageModeError, decode_problem, to_rgb8
from fastforec.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OVERLAY_ALPHA = 0.5
# Cityscapes train id 0..18 -> its official label id (cityscapesScripts' labels.py): what the
# benchmark's evaluation scripts and test server read from a *_labelIds.png prediction.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_UNLABELED_ID = 0


def list_inputs(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--input: no image ({', '.join(IMAGE_SUFFIXES)}) in '{path}'")
        return files
    if not path.is_file():
        raise UserError(f"--input '{path}' does not exist")
    return [path]


def load_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(to_rgb8(im))
    except OSError as e:
        raise UserError(f"cannot read image '{path}': {decode_problem(e, path.read_bytes())}") from None
    except ImageModeError as e:
        raise UserError(f"image '{path}': {e}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def colourise(mask: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A palette ("P" mode) PNG whose indices are the class ids."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def cityscapes_label_ids(mask: np.ndarray) -> Image.Image:
    """A single-channel PNG of Cityscapes label ids from a train-id class map."""
    lut = np.full(256, CITYSCAPES_UNLABELED_ID, dtype=np.uint8)
    lut[:len(CITYSCAPES_LABEL_IDS)] = CITYSCAPES_LABEL_IDS
    return Image.fromarray(lut[mask.astype(np.uint8)], mode="L")


def overlay(image: torch.Tensor, mask: Image.Image) -> Image.Image:
    """The coloured ``mask`` blended over ``image`` ((1, 3, H, W) in [0, 1], as `load_image` gives)."""
    rgb = Image.fromarray((image[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
    return Image.blend(rgb, mask.convert("RGB"), OVERLAY_ALPHA)
