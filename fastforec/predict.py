"""`fastforec predict`: palette-coloured masks and overlays for image files."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastforec.atomic import atomic_write_bytes
from fastforec.data.images import decode_problem
from fastforec.errors import UserError
from fastforec.evaluate import predict, resolve_eval_mode
from fastforec.inference import load_trained_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OVERLAY_ALPHA = 0.5


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
            rgb = np.asarray(im.convert("RGB"))
    except OSError as e:
        raise UserError(f"cannot read image '{path}': {decode_problem(e, path.read_bytes())}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def colourise(mask: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A palette ("P" mode) PNG whose indices are the class ids."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, dataset = load_trained_model(args.checkpoint, weights=args.weights, device=device)
    # The dataset kind travels in the checkpoint; one written before it did counts as unknown.
    mode = resolve_eval_mode(cfg.eval.mode, dataset.get("kind", "unknown"))
    crop = cfg.data.crop_size
    out = Path(args.out)
    for path in list_inputs(Path(args.input)):
        image = load_image(path).to(device)
        pred = predict(model, image, mode=mode, num_classes=dataset["num_classes"], window=crop,
                       stride=cfg.eval.stride(crop))[0].cpu().numpy()
        mask = colourise(pred, dataset["palette"])
        rgb = Image.fromarray((image[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))
        overlay = Image.blend(rgb, mask.convert("RGB"), OVERLAY_ALPHA)
        atomic_write_bytes(out / f"{path.stem}.png", _png_bytes(mask))
        atomic_write_bytes(out / f"{path.stem}_overlay.png", _png_bytes(overlay))
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0
