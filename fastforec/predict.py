"""`fastforec predict`: class maps, overlays and benchmark-format PNGs for image files.

For an input ``x.jpg`` it writes into ``--out``:

- ``x.png``: a palette PNG whose pixel values are the class (train) ids and whose palette colours
  them: on VOC this is the format of ``SegmentationClass`` and of the evaluation server;
- ``x_overlay.png``: the coloured mask over the image;
- on Cityscapes also ``x_labelIds.png``: the official label ids (7, 8, 11, ...), what
  cityscapesScripts' ``evalPixelLevelSemanticLabeling`` and the test server read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastforec.atomic import atomic_write_bytes
from fastforec.checkpoint_spec import PEER_SPEC_FORMS, check_exists

NAME = "predict"
HELP = "class-id masks, overlays and benchmark-format PNGs for images"
CITYSCAPES = "cityscapes"  # the manifest's dataset kind whose predictions also get label-id PNGs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), a `fastforec export` .safetensors file, "
                        f"or a peer's checkpoint ({PEER_SPEC_FORMS}; needs --config)")
    p.add_argument("--config", default=None,
                   help="a recipe: needed for a peer's checkpoint (its network and dataset), else it overrides the "
                        "checkpoint's evaluation settings")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: the student of a checkpoint, the weights an export holds")


def run(args: argparse.Namespace) -> int:
    check_exists(args.checkpoint)  # before the heavy imports: a typo is an instant error
    # lazy: torch and the model code; keeps `fastforec --help` and argument errors instant
    import torch

    from fastforec.config import load_config, with_overrides
    from fastforec.eval_cli import settings_source
    from fastforec.evaluate import predict, resolve_eval_mode
    from fastforec.image_files import cityscapes_label_ids, colourise, list_inputs, load_image, overlay, png_bytes
    from fastforec.inference import load_trained_model

    given = load_config(args.config, args.overrides) if args.config else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, dataset = load_trained_model(args.checkpoint, weights=args.weights, device=device, config=given)
    if given is not None and not dataset.get("source"):  # a peer's cfg is already the recipe's
        cfg.eval = given.eval  # the recipe's protocol; the network stays the checkpoint's
        cfg.data.crop_size = given.data.crop_size
    else:
        cfg = with_overrides(cfg, args.overrides)
    print(settings_source(args.config, args.overrides), file=sys.stderr)
    # The dataset kind travels in the checkpoint; one written before it did counts as unknown.
    mode = resolve_eval_mode(cfg.eval.mode, dataset.get("kind", "unknown"))
    crop = cfg.data.crop_size
    out = Path(args.out)
    for path in list_inputs(Path(args.input)):
        image = load_image(path).to(device)
        pred = predict(model, image, mode=mode, num_classes=dataset["num_classes"], window=crop,
                       stride=cfg.eval.stride(crop), protocol=cfg.eval.sliding_protocol,
                       size_multiple=cfg.eval.size_multiple)[0].cpu().numpy()
        mask = colourise(pred, dataset["palette"])
        atomic_write_bytes(out / f"{path.stem}.png", png_bytes(mask))
        atomic_write_bytes(out / f"{path.stem}_overlay.png", png_bytes(overlay(image, mask)))
        if dataset.get("kind") == CITYSCAPES:
            atomic_write_bytes(out / f"{path.stem}_labelIds.png", png_bytes(cityscapes_label_ids(pred)))
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0
