"""`fastforec predict`: class maps, overlays and benchmark-format PNGs for image files.

For an input ``x.jpg`` it writes ``x.png`` into one folder of ``--out`` per kind (``--format``):

- ``palette/``: a palette PNG whose pixel values are the class (train) ids and whose palette
  colours them: on VOC this is the format of ``SegmentationClass`` and of the evaluation server;
- ``overlay/``: the coloured mask over the image;
- ``labelids/`` (default on Cityscapes): the official label ids (7, 8, 11, ...), what
  cityscapesScripts' ``evalPixelLevelSemanticLabeling`` and the test server read: give them
  this folder as it is.

A folder given as ``--input`` is read with its subfolders, mirrored under ``--out``; inputs of
one folder sharing a stem keep their extension in the name (``x_jpg.png``); an output that would
replace an input is refused before anything is written (fastforec/predict_outputs.py). Images
are read as displayed (EXIF orientation applied), so masks match the picture the user sees.

Memory: an image above ``--whole-max-pixels`` is predicted in sliding windows of
:data:`LARGE_IMAGE_WINDOW` pixels rather than whole, and sliding windows keep scores for one
row of windows at a time (``evaluate.sliding_window_classes``): a 6000 x 6000 photo no longer
needs one forward pass over 36 million pixels (docs/failure_modes.md has the measured peaks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastforec.atomic import atomic_write_bytes
from fastforec.checkpoint_spec import PEER_SPEC_FORMS, check_exists
from fastforec.config import add_override_argument
from fastforec.errors import UserError, quote_names

if TYPE_CHECKING:  # annotations only: torch and the model code are imported inside run
    import torch

    from fastforec.config import Config
    from fastforec.models import Segmentor
    from fastforec.predict_outputs import Outputs

NAME = "predict"
HELP = "class-id masks, overlays and benchmark-format PNGs for images"
CITYSCAPES = "cityscapes"  # the manifest's dataset kind whose predictions also get label-id PNGs
# Above this many pixels a "whole image" prediction runs in sliding windows instead: one forward
# pass over a 6000 x 6000 photo held 8.2 GiB on a CPU (and runs out of memory on a GPU), while
# whole-image inference up to 2048 x 2048 (Cityscapes' 2048 x 1024 twice over) stays as trained.
WHOLE_IMAGE_MAX_PIXELS = 2048 * 2048
# The window of that fallback: large, so that each window sees much of the scene as a whole-image
# pass would (never smaller than the training crop), and small enough for bounded memory.
LARGE_IMAGE_WINDOW = 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), a `fastforec export` .safetensors file, "
                        f"or a peer's checkpoint ({PEER_SPEC_FORMS}, or the file alone)")
    p.add_argument("--config", default=None,
                   help="a recipe: for a peer's checkpoint its settings (default: the source's recipe for the "
                        "dataset its class count names, 21: VOC, 19: Cityscapes; no dataset is read), else it "
                        "overrides the checkpoint's evaluation settings")
    add_override_argument(p, help="change one evaluation setting (repeatable), e.g. --set eval.mode=sliding")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: the student of a checkpoint, the weights an export holds")
    p.add_argument("--format", type=_formats, default=None, metavar="KINDS",
                   help="what to write, comma-separated, each kind into its own folder of --out: palette (class "
                        "ids), overlay, labelids (Cityscapes' label ids); default palette,overlay, plus labelids "
                        "on Cityscapes")
    p.add_argument("--whole-max-pixels", type=_pixels, default=WHOLE_IMAGE_MAX_PIXELS, metavar="N",
                   help=f"an image of more pixels than this is predicted in sliding windows of {LARGE_IMAGE_WINDOW} px "
                        f"instead of whole, in bounded memory (default {WHOLE_IMAGE_MAX_PIXELS}: 2048 x 2048)")


def _formats(text: str) -> tuple[str, ...]:
    from fastforec.predict_outputs import FORMATS

    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in FORMATS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'} is not a kind of output; choose among "
                                         f"{', '.join(FORMATS)}, comma-separated")
    return kinds


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a pixel count >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    check_exists(args.checkpoint)  # before the heavy imports: a typo is an instant error
    # lazy: torch and the model code; keeps `fastforec --help` and argument errors instant
    import torch

    from fastforec.config import load_config, with_overrides
    from fastforec.eval_cli import settings_source
    from fastforec.evaluate import resolve_eval_mode
    from fastforec.image_files import list_inputs
    from fastforec.inference import load_trained_model
    from fastforec.predict_outputs import LABEL_IDS, default_formats, plan_outputs

    given = load_config(args.config, args.overrides) if args.config else None
    input_root, out = Path(args.input), Path(args.out)
    inputs = list_inputs(input_root, exclude=out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, dataset = load_trained_model(args.checkpoint, weights=args.weights, device=device, config=given)
    if given is not None and not dataset.get("source"):  # a peer's cfg is already the recipe's
        cfg.eval = given.eval  # the recipe's protocol; the network stays the checkpoint's
        cfg.data.crop_size = given.data.crop_size
    else:
        cfg = with_overrides(cfg, args.overrides)
    print(dataset.get("assumed") or settings_source(args.config, args.overrides), file=sys.stderr)
    # every output named and checked before the first is written
    cityscapes = dataset.get("kind") == CITYSCAPES
    formats = args.format or default_formats(cityscapes=cityscapes)
    if LABEL_IDS in formats and not cityscapes:
        raise UserError(f"--format labelids: label ids are Cityscapes' (this model's classes are "
                        f"{dataset.get('kind', 'unknown')}'s); choose among palette, overlay")
    planned = plan_outputs(inputs, input_root=input_root, out=out, formats=formats)
    # The dataset kind travels in the checkpoint; one written before it did counts as unknown.
    mode = resolve_eval_mode(cfg.eval.mode, dataset.get("kind", "unknown"))
    for done, outputs in enumerate(planned):
        try:
            _predict_one(model, cfg, dataset, outputs, mode=mode, whole_max_pixels=args.whole_max_pixels,
                         device=device)
        except UserError as e:  # an unreadable image: say what is complete, and how to go on
            if done:
                raise UserError(f"{e}; the {done} image(s) before it are predicted (their files complete): replace or "
                                f"remove this one and run again") from None
            raise
    if len(planned) > 1:
        folders = sorted({str(path.parent) for outputs in planned for path in outputs.files})
        print(f"{len(planned)} images predicted: {', '.join(formats)} PNGs in {quote_names(folders)}", file=sys.stderr)
    return 0


def _predict_one(model: Segmentor, cfg: Config, dataset: dict[str, Any], outputs: Outputs, *, mode: str,
                 whole_max_pixels: int, device: torch.device) -> None:
    from fastforec.evaluate import predict
    from fastforec.image_files import (
        cityscapes_label_ids,
        colourise,
        overlay,
        png_bytes,
        read_rgb,
        to_pixels,
        to_tensor,
    )
    from fastforec.predict_outputs import LABEL_IDS, OVERLAY, PALETTE

    rgb = read_rgb(outputs.source)
    mode, window, protocol = _inference_plan(outputs.source, rgb.shape[:2], mode=mode, cfg=cfg,
                                             whole_max_pixels=whole_max_pixels)
    # sliding windows take the 8-bit image and scale each window: a quarter of the memory
    image = to_pixels(rgb) if mode == "sliding" else to_tensor(rgb)
    pred = predict(model, image.to(device), mode=mode, num_classes=dataset["num_classes"], window=window,
                   stride=cfg.eval.stride(window), protocol=protocol, size_multiple=cfg.eval.size_multiple,
                   dtype=_class_dtype(dataset["num_classes"]))[0].cpu().numpy()
    mask = colourise(pred, dataset["palette"])
    writers = {PALETTE: lambda: png_bytes(mask), OVERLAY: lambda: png_bytes(overlay(rgb, mask)),
               LABEL_IDS: lambda: png_bytes(cityscapes_label_ids(pred))}
    for kind, path in outputs.by_kind.items():
        atomic_write_bytes(path, writers[kind]())
    print(f"{outputs.source} -> {', '.join(str(p) for p in outputs.files)}")


def _inference_plan(path: Path, size: tuple[int, int], *, mode: str, cfg: Config, whole_max_pixels: int
                    ) -> tuple[str, int, str]:
    """(mode, window, sliding protocol) for one image: the checkpoint's, except that a whole-image
    prediction of more than ``whole_max_pixels`` pixels runs in windows (said on stderr)."""
    crop = cfg.data.crop_size
    h, w = size
    if mode != "whole" or h * w <= whole_max_pixels:
        return mode, crop, cfg.eval.sliding_protocol
    window = max(crop, LARGE_IMAGE_WINDOW)
    if cfg.eval.size_multiple:  # a ViT's whole-image input is resized to a multiple of its patch
        window -= window % cfg.eval.size_multiple
    print(f"note: '{path}' is {w} x {h} ({h * w / 1e6:.1f} Mpx), more than --whole-max-pixels "
          f"{whole_max_pixels}: predicted in sliding windows of {window} px (bounded memory), not whole",
          file=sys.stderr)
    return "sliding", window, "border_aligned"


def _class_dtype(num_classes: int) -> torch.dtype:
    import torch

    # the class map of a large image in one byte per pixel rather than eight
    return torch.uint8 if num_classes <= 256 else torch.long
