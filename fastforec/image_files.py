"""Image files in and out of a trained model: the inputs of `fastforec predict` and
`fastforec visualize latent`, and the palette masks and overlays `predict` writes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastforec.data.images import ImageModeError, decode_problem, displayed, to_rgb8
from fastforec.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
HIDDEN_PREFIX = "."
OVERLAY_ALPHA = 0.5
# Cityscapes train id 0..18 -> its official label id (cityscapesScripts' labels.py): what the
# benchmark's evaluation scripts and test server read from a *_labelIds.png prediction.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_UNLABELED_ID = 0


def list_inputs(path: Path, *, exclude: Path | None = None) -> list[Path]:
    """``path`` itself, or every image under the directory ``path``, subfolders included (a
    Cityscapes ``leftImg8bit/val`` holds one folder per city), sorted. Hidden files and folders
    (``.ipynb_checkpoints``, macOS's ``._x.jpg``) are not inputs, nor is anything under
    ``exclude`` (an output folder inside the input folder: its predictions are no inputs)."""
    if path.is_dir():
        files = sorted(_images_under(path, exclude.resolve() if exclude is not None else None))
        if not files:
            raise UserError(f"--input: no image ({', '.join(IMAGE_SUFFIXES)}) in '{path}' or its subfolders")
        return files
    if not path.is_file():
        raise UserError(f"--input '{path}' does not exist")
    return [path]


def _images_under(root: Path, exclude: Path | None) -> list[Path]:
    found = []
    # os.walk does not follow links to folders: a link back up the tree cannot loop
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(HIDDEN_PREFIX)
                         and (exclude is None or (Path(folder) / d).resolve() != exclude)]
        found += [Path(folder) / n for n in names
                  if not n.startswith(HIDDEN_PREFIX) and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return found


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of the picture as displayed (EXIF orientation applied), writable."""
    try:
        with Image.open(path) as im:
            return np.array(to_rgb8(displayed(im)))
    except OSError as e:
        raise UserError(f"cannot read image '{path}': {decode_problem(e, path.read_bytes())}") from None
    except ImageModeError as e:
        raise UserError(f"image '{path}': {e}") from None


def to_pixels(rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) uint8 view of ``read_rgb``'s array (no copy)."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] from ``read_rgb``'s array."""
    return to_pixels(rgb).float() / 255.0


def load_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], as displayed."""
    return to_tensor(read_rgb(path))


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


def overlay(rgb: np.ndarray, mask: Image.Image) -> Image.Image:
    """The coloured ``mask`` blended over the image (``read_rgb``'s array)."""
    return Image.blend(Image.fromarray(rgb), mask.convert("RGB"), OVERLAY_ALPHA)
