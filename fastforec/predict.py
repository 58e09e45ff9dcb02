"""`fastforec predict`: palette-coloured masks and overlays for image files."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastforec.atomic import atomic_write_bytes

NAME = "predict"
HELP = "palette-coloured masks and overlays for images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), or a `fastforec export` .safetensors file")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: the student of a checkpoint, the weights an export holds")


def run(args: argparse.Namespace) -> int:
    # lazy: torch and the model code; keeps `fastforec --help` and argument errors instant
    import torch

    from fastforec.evaluate import predict, resolve_eval_mode
    from fastforec.image_files import colourise, list_inputs, load_image, overlay, png_bytes
    from fastforec.inference import load_trained_model

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
        atomic_write_bytes(out / f"{path.stem}.png", png_bytes(mask))
        atomic_write_bytes(out / f"{path.stem}_overlay.png", png_bytes(overlay(image, mask)))
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0
