"""Tiny `fastforec export` files for the tests of what reads them (predict, model.pretrained),
importable as ``tests.export_files``: the network is built from a config and written by the
export writers themselves, so no training run is needed (the export tests check that a real
checkpoint exports the same way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CLASSES = ("background", "thing", "stuff")
PALETTE = ((0, 0, 0), (128, 0, 0), (0, 128, 0))
TINY_MODEL = {"backbone": "resnet18", "output_stride": 16, "backbone_width": 0.25, "decoder_channels": 16,
              "pretrained": None}


def tiny_config(**model: Any) -> Any:
    from fastforec.config import config_from_dict

    return config_from_dict({"data": {"crop_size": 48}, "model": {**TINY_MODEL, **model},
                             "train": {"name": "tiny"}, "deepspeed": {}})


def write_export(path: Path, *, kind: str = "voc", seed: int = 0, onnx: bool = False, **model: Any) -> Path:
    """A safetensors (or ONNX) export of a randomly initialised tiny network for ``kind`` data."""
    from fastforec.export_format import metadata, write_onnx, write_safetensors
    from fastforec.models import build_model

    cfg = tiny_config(**model)
    torch.manual_seed(seed)
    net = build_model(cfg.model, num_classes=len(CLASSES), reconstruction=None).eval()
    dataset = {"kind": kind, "num_classes": len(CLASSES), "class_names": list(CLASSES),
               "palette": [list(c) for c in PALETTE]}
    meta = metadata(cfg, dataset, "student", path.with_suffix(".pt"))
    (write_onnx if onnx else write_safetensors)(net, meta, path)
    return path
