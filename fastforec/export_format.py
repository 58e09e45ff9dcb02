"""The export file format: the segmentation network of a checkpoint, alone, as safetensors or ONNX
(written by `fastforec export`, fastforec/export.py; read back by ``read_export``).

Only encoder + segmentation decoder leave: the reconstruction (or fg/bg) decoder is a training
device. Both formats take an RGB image in [0, 1], (B, 3, H, W) float32, and give logits
(B, num_classes, H, W): the ImageNet standardisation is inside the network.

- safetensors: the weights, and as metadata (strings) the resolved run config and the class
  table, so ``fastforec predict --checkpoint model.safetensors`` rebuilds the network from the
  file alone. ``read_export`` is the one reader.
- ONNX: batch, height and width are dynamic (on DINOv2, height and width are the crop's); the
  same metadata sits in ``metadata_props``.

Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fastforec.atomic import atomic_path
from fastforec.checkpoint_files import CheckpointError
from fastforec.config import Config, config_from_dict
from fastforec.errors import UserError
from fastforec.models import DPT, Segmentor, build_model

EXPORT_FORMAT = "fastforec-segmentation-v1"
ONNX_SUFFIX = ".onnx"
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# ONNX tracing example: batch 2 and unequal height/width, so that the tracer cannot mistake the
# dynamic dimensions for constants or for each other (the values themselves do not matter).
TRACE_SHAPE = (2, 3, 64, 96)
ONNX_OPSET = 18
IO_DOC = ("input 'image': RGB float32 in [0, 1], (batch, 3, height, width); output 'logits': "
          "(batch, num_classes, height, width); ImageNet standardisation is inside the network")


class SegmentationLogits(nn.Module):
    """``x -> logits``: the dict-free forward that ONNX wants."""

    def __init__(self, model: Segmentor):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["seg"]


def metadata(cfg: Config, dataset: dict[str, Any], weights: str, source: Path) -> dict[str, str]:
    return {"format": EXPORT_FORMAT, "weights": weights, "source": str(source), "io": IO_DOC,
            "config": json.dumps(cfg.to_dict()), "dataset": json.dumps(dataset)}


def write_safetensors(model: Segmentor, meta: dict[str, str], out: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def fixed_onnx_size(model: Segmentor) -> bool:
    """Whether the ONNX graph of ``model`` takes one image size only (see :func:`write_onnx`)."""
    return isinstance(model, DPT) and bool(model.backbone.fixed_onnx_size)


def write_onnx(model: Segmentor, meta: dict[str, str], out: Path, *, vit_size: int | None = None) -> None:
    """The network as an ONNX graph with a dynamic batch; the image size is dynamic too, except
    for a DPT on DINOv2, whose graph takes ``vit_size`` x ``vit_size`` images: its position
    embeddings are resampled per patch grid, which the exporter fixes at the traced size
    (DINOv3's RoPE is computed from the grid in the graph: any size)."""
    # lazy: onnx takes seconds to import and only this writer needs it, while every model load
    # (eval, predict, visualize) imports this module for read_export
    import onnx

    dim = torch.export.Dim
    if fixed_onnx_size(model):
        patch = model.backbone.patch
        if vit_size is None or vit_size % patch:
            raise ValueError(f"a DPT export on {model.backbone.family.name} needs an image size that is a multiple "
                             f"of {patch}, got {vit_size}")
        shape, dynamic = (2, 3, vit_size, vit_size), {"x": {0: dim("batch")}}
    else:
        shape, dynamic = TRACE_SHAPE, {"x": {0: dim("batch"), 2: dim("height"), 3: dim("width")}}
    program = torch.onnx.export(
        SegmentationLogits(model).eval(), (torch.rand(*shape),), dynamo=True, opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False,
        dynamic_shapes=dynamic)
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))


def onnx_description(path: str | Path) -> str:
    """What an ``.onnx`` file is, for the message that refuses it where PyTorch weights are read:
    fastforec runs its networks in PyTorch, and an ONNX graph is for onnxruntime or TensorRT."""
    import onnx  # lazy, as in write_onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # protobuf raises DecodeError, onnx its own types: the file is not ONNX
        return f"named .onnx but not a readable ONNX model ({type(e).__name__})"
    if meta.get("format") != EXPORT_FORMAT:
        return "an ONNX model (not one written by `fastforec export`)"
    return (f"an ONNX export (`fastforec export --format onnx`) of the {meta.get('weights', 'student')} weights of "
            f"'{meta.get('source', '?')}'")


def refuse_onnx(path: str | Path, option: str, *, error: type[UserError] = CheckpointError) -> None:
    """Raise ``error`` saying what an ``.onnx`` ``path`` given as ``option`` is and what to give
    instead; nothing for other files."""
    if Path(path).suffix.lower() != ONNX_SUFFIX or not Path(path).is_file():
        return
    raise error(f"{option} '{path}' is {onnx_description(path)}: an ONNX graph runs in onnxruntime or "
                          f"TensorRT, fastforec reads PyTorch weights; give the checkpoint or run directory it was "
                          f"exported from, or a `fastforec export --format safetensors` file")


def read_export(path: str | Path, *, weights: str | None = None,
                device: torch.device | str = "cpu") -> tuple[Segmentor, Config, dict[str, Any]]:
    """(network in eval mode, run config, dataset info) from a ``fastforec export`` safetensors file.
    ``weights``, when given, must be the ones the file holds."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"'{path}' cannot be read as safetensors ({type(e).__name__}: {e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"'{path}' is not a fastforec export (no '{EXPORT_FORMAT}' metadata); make one with "
                              f"`fastforec export --checkpoint RUN --format safetensors --out FILE`")
    if weights is not None and weights != meta["weights"]:
        raise CheckpointError(f"'{path}' holds the {meta['weights']} weights only; drop --weights, or export the "
                              f"{weights} with `fastforec export --weights {weights}`")
    cfg = config_from_dict(json.loads(meta["config"]))
    dataset = json.loads(meta["dataset"])
    model = build_model(cfg.model, num_classes=dataset["num_classes"], reconstruction=None)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg, dataset
