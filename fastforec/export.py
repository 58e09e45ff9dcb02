"""`fastforec export`: the segmentation network of a checkpoint, alone, as safetensors or ONNX.

The file format (what leaves, its metadata, the reader) is fastforec/export_format.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastforec.checkpoint_spec import PEER_SPEC_FORMS, check_exists
from fastforec.config import ConfigError

NAME = "export"
HELP = "the segmentation network alone, as safetensors or ONNX"
FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}  # --format: the suffix --out must have


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), or a peer's checkpoint "
                        f"({PEER_SPEC_FORMS}, or the file alone)")
    p.add_argument("--config", default=None,
                   help="the recipe of a peer's checkpoint (default: its source's for the dataset its class count "
                        "names; no dataset is read)")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="safetensors (weights + config and class table as metadata) or onnx (dynamic batch; dynamic "
                        "image size too, except a DPT on DINOv2: its graph takes the training crop, said at export)")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: the student of a fastforec checkpoint; the weights a peer reports")
    p.add_argument("--out", required=True, help="output file (.safetensors or .onnx, as --format)")


def run(args: argparse.Namespace) -> int:
    """Errors (missing checkpoint, no teacher, wrong suffix) reach `fastforec.cli.main`: exit 2."""
    out = Path(args.out)
    suffix = FORMATS[args.format]
    if out.suffix != suffix:
        article = "an ONNX" if args.format == "onnx" else "a safetensors"
        raise ConfigError(f"--out '{out}': {article} export must end with '{suffix}' "
                          f"(fastforec predict recognises exports by it)")
    check_exists(args.checkpoint)  # before the heavy imports: a typo is an instant error
    # lazy: torch and the model code; keeps `fastforec --help` and argument errors instant
    from fastforec.config import load_config
    from fastforec.export_format import fixed_onnx_size, metadata, write_onnx, write_safetensors
    from fastforec.inference import segmentation_network

    given = load_config(args.config) if args.config else None
    model, cfg, dataset, ckpt = segmentation_network(args.checkpoint, args.weights, config=given)
    if dataset.get("assumed"):
        print(dataset["assumed"], file=sys.stderr)
    weights = args.weights or dataset.get("weights", "student")
    meta = metadata(cfg, dataset, weights, ckpt)
    if args.format == "safetensors":
        write_safetensors(model, meta, out)
    else:
        write_onnx(model, meta, out, vit_size=cfg.data.crop_size)
        if fixed_onnx_size(model):
            size = cfg.data.crop_size
            print(f"note: the ONNX graph takes {size}x{size} images only (DINOv2's position embeddings are resampled "
                  f"for the traced patch grid); resize inputs to {size}x{size}, or use the safetensors export, which "
                  f"takes any multiple of the patch size", file=sys.stderr)
    params = sum(p.numel() for p in model.parameters())
    print(f"{ckpt} ({weights}, {params / 1e6:.1f} M parameters, {dataset['num_classes']} classes) -> {out} "
          f"({args.format}, {out.stat().st_size / 2 ** 20:.1f} MiB)")
    return 0
